"""Shared test set-up: tests marked `bpf` need root and a BPF-capable kernel; on a machine without
them they FAIL with a clear message (deselect them explicitly with `-m "not bpf"`), never skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis profiles: `ci` (default) keeps the suite within CI's budget; `fuzz` (`just fuzz`,
# HYPOTHESIS_PROFILE=fuzz) runs the same properties a hundred times longer. Tests that set their own
# max_examples keep it; tests/fuzz/ takes the profile's.
settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=15_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _require_bpf(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("bpf") is None:
        return
    if os.geteuid() != 0:
        pytest.fail("this test loads real BPF programs and needs root (deselect with -m 'not bpf')")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.fail("this test needs kernel BTF (/sys/kernel/btf/vmlinux)")
    if not Path("/sys/kernel/tracing/events").is_dir():
        pytest.fail("tracefs is not mounted at /sys/kernel/tracing (scripts/bootstrap mounts it)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Real-kernel tests see the whole host: a test that fails is run once more, and the rerun shows in the
    # summary ("1 rerun"). A failure that repeats is a failure. Closes lost in bursts were two causes, both
    # fixed in the kernel side (a full ring buffer deferred the close; a skipped destroy hook is swept and
    # counted in qtap_kernel_swept_socks_total), so a rerun is for the host's other traffic, not a known loss.
    for item in items:
        if item.get_closest_marker("bpf") is not None and item.get_closest_marker("flaky") is None:
            item.add_marker(pytest.mark.flaky(reruns=1))
