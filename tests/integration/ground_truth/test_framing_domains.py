"""HTTP framing (issue 19 item 8) and domains with their precedence (item 7), against ground truth."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ground_truth import scenarios as S
from tests.integration.ground_truth.env import GT, PEERS

pytestmark = pytest.mark.bpf


def _run(gt: GT, sc: S.Scenario) -> None:
    try:
        gt.check(sc.expected, pids=sc.pids, ports=sc.ports)
        for extra in sc.after:
            extra(gt)
    finally:
        for done in sc.cleanup:
            done()


def test_head_over_64k_then_resync(gt: GT) -> None:
    _run(gt, S.big_head(gt))


def test_expect_100_continue_417(gt: GT, tmp_path: Path) -> None:
    body = tmp_path / "body.bin"
    body.write_bytes(b"x" * 5000)
    _run(gt, S.expect_417(gt, body))


def test_h2_push_marked_pushed(gt: GT, tmp_path: Path) -> None:
    _run(gt, S.h2_push(gt, tmp_path))


def test_non_utf8_path_percent_encoded(gt: GT) -> None:
    _run(gt, S.non_utf8_path(gt))


def test_domain_from_etc_hosts(gt: GT) -> None:
    _run(gt, S.domain_from_hosts(gt))


def test_domain_sni_beats_host(gt: GT) -> None:
    _run(gt, S.domain_sni_over_host(gt))


@pytest.fixture
def mmsg(tmp_path: Path) -> str:
    exe = tmp_path / "mmsg"
    subprocess.run(["cc", "-O1", "-o", str(exe), str(PEERS / "mmsg.c")], check=True, timeout=120)
    return str(exe)


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[S.Dns]:
    d = S.Dns(tmp_path)
    try:
        yield d
    finally:
        d.stop()


def test_domain_host_beats_other_process_dns(gt: GT, dns: S.Dns, mmsg: str) -> None:
    _run(gt, S.domain_host_over_other_dns(gt, dns.addr, mmsg))
