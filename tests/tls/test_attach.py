"""The probes to attach for a real TLS library (the system's OpenSSL): one per (offset, kind), in offset
order, and together exactly the sites of every plan."""

from __future__ import annotations

from collections import Counter

from qtap_async.tls.attach import attachments
from tests.tls.system_libs import system_libssl


def test_one_probe_per_offset_and_kind_covering_every_plan_site() -> None:
    lib = system_libssl()
    assert lib.kind == "openssl" and lib.plans
    probes = attachments(lib)
    keys = [(a.offset, a.retprobe) for a in probes]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    # Every site of every plan is served by exactly one probe, and no probe serves nothing.
    sites = Counter((s.offset, s.role == "uretprobe", f"{p.function}:{s.role}") for p in lib.plans for s in p.sites)
    served = Counter((a.offset, a.retprobe, role) for a in probes for role in a.roles)
    assert served == sites
    assert all(a.roles for a in probes)
    for a in probes:
        site_emulated = {s.emulated for p in lib.plans for s in p.sites
                         if (s.offset, s.role == "uretprobe") == (a.offset, a.retprobe)}
        assert a.emulated in site_emulated


def test_plans_that_share_a_function_entry_share_its_probe() -> None:
    lib = system_libssl()
    entries = Counter((s.offset, s.role == "uretprobe") for p in lib.plans for s in p.sites)
    shared = [k for k, n in entries.items() if n > 1]
    probes = {(a.offset, a.retprobe): a for a in attachments(lib)}
    for key in shared:
        assert len(probes[key].roles) == entries[key]
    assert len(probes) == len(entries)
