"""Syscalls that move bytes (issue 19 item 3) and DNS through glibc's resolver, against ground truth."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ground_truth import scenarios as S
from tests.integration.ground_truth.env import GT, PEERS

pytestmark = pytest.mark.bpf


@pytest.fixture(scope="session")
def cbin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The C peers, compiled by the test with the system compiler (raw syscalls, no extra libraries)."""
    d = tmp_path_factory.mktemp("cpeers")
    out = {}
    for name in ("mmsg", "uring"):
        exe = d / name
        subprocess.run(["cc", "-O1", "-Wall", "-o", str(exe), str(PEERS / f"{name}.c")], check=True, timeout=120)
        exe.chmod(0o755)
        out[name] = str(exe)
    return out


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[S.Dns]:
    d = S.Dns(tmp_path)
    try:
        yield d
    finally:
        d.stop()


def _run(gt: GT, sc: S.Scenario) -> None:
    gt.check(sc.expected, pids=sc.pids, ports=sc.ports)
    for extra in sc.after:
        extra(gt)


def test_sendfile_gap(gt: GT) -> None:
    _run(gt, S.sendfile_body(gt))


def test_splice_counted(gt: GT) -> None:
    _run(gt, S.splice_both_ways(gt))


def test_io_uring_detected_and_counted(gt: GT, cbin: dict[str, str]) -> None:
    _run(gt, S.io_uring_client(gt, cbin["uring"]))


def test_sendmmsg_recvmmsg_dns(gt: GT, cbin: dict[str, str], dns: S.Dns) -> None:
    _run(gt, S.dns_mmsg(gt, dns, cbin["mmsg"]))


def test_glibc_resolver_queries(gt: GT, dns: S.Dns, tmp_path: Path) -> None:
    _run(gt, S.dns_glibc(gt, dns, tmp_path))
