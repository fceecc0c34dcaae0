"""uprobe_multi links made with bpf(2) (the system libbpf predates them): real loads and attaches here."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from qtap_async.bpf.link import FdLink
from qtap_async.bpf.loader import objects_dir
from qtap_async.bpf.object import BpfObject
from qtap_async.bpf.uprobe_multi import create_link
from qtap_async.errors import AttachError, BpfError

pytestmark = pytest.mark.bpf


def _features(multi: bool) -> BpfObject:
    obj = BpfObject.open(objects_dir() / "features.bpf.o")
    for name, p in obj.programs.items():
        p.set_autoload(name == "feat_uprobe")
    if multi:
        obj.use_uprobe_multi()
    obj.load()
    return obj


def test_one_link_many_offsets_and_close_detaches(tmp_path: Path) -> None:
    target = tmp_path / "never-run"
    target.write_bytes(b"\x90" * 4096)  # a file nobody maps: the probes never fire
    with _features(True) as obj:
        link = obj.program("feat_uprobe").attach_uprobe_multi(str(target), [0, 16, 32], [1, 2, 3])
        assert isinstance(link, FdLink) and not link.closed and "3 offsets" in link.description
        # A plain attach on a multi-loaded object is a multi link of one offset.
        one = obj.program("feat_uprobe").attach_uprobe(str(target), 64, cookie=7)
        assert isinstance(one, FdLink)
        assert obj.links == [link, one]
        obj.detach_all()
        assert link.closed and one.closed and obj.links == []


def test_errors_name_the_program_the_file_and_the_reason(tmp_path: Path) -> None:
    with _features(True) as obj:
        with pytest.raises(AttachError) as info:
            obj.program("feat_uprobe").attach_uprobe_multi(str(tmp_path / "missing"), [0], [0])
        assert info.value.errno == errno.ENOENT and "feat_uprobe" in str(info.value)
        assert "missing" in str(info.value)
        with pytest.raises(AttachError, match="2 offsets and 1 cookies"):
            create_link(obj.program("feat_uprobe").fd, str(tmp_path), [0, 1], [0])
    with _features(False) as classic:
        with pytest.raises(AttachError, match="not loaded for uprobe_multi"):
            classic.program("feat_uprobe").attach_uprobe_multi(str(tmp_path), [0], [0])
        with pytest.raises(BpfError, match="already loaded"):
            classic.use_uprobe_multi()


def test_a_file_nobody_uses_is_detached_and_forgotten() -> None:
    """TlsProbes on the real tls.bpf.o: a file whose last user exited is detached after the grace, its links
    closed and no longer held by the object (a long-running agent attaches and detaches files for days)."""
    import os

    from qtap_async.bpf.loader import Capture, CaptureSettings
    from qtap_async.tls.attach import TlsProbes
    from tests.tls.system_libs import system_libssl

    lib = system_libssl()
    cap = Capture(CaptureSettings(self_tgid=os.getpid()))
    try:
        probes = TlsProbes(cap)
        try:
            before = len(probes.obj.links)
            assert probes.attach(lib, pid=4242).attached
            links = probes.files[lib.key].links
            assert links and len(probes.obj.links) == before + len(links)
            probes.process_exited(4242, now=100.0)
            assert probes.detach_unused(now=100.5, grace_s=1.0) == 0  # still within the grace
            assert probes.detach_unused(now=102.0, grace_s=1.0) == 1
            assert lib.key not in probes.files and all(link.closed for link in links)
            assert len(probes.obj.links) == before
        finally:
            probes.close()
    finally:
        cap.close()
