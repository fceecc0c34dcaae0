"""What `qtap inspect` shows of a real TLS library (the system's OpenSSL), as data and as text."""

from __future__ import annotations

import msgspec

from qtap_async.tls.describe import describe, describe_data, describe_text
from tests.tls.system_libs import system_libssl


def test_describe_lists_functions_plans_and_sites() -> None:
    lib = system_libssl()
    (d,) = describe([lib])
    assert (d["path"], d["kind"], d["version"], d["linkage"]) == (lib.path, "openssl", lib.version, lib.linkage)
    assert d["functions"] == [f.name for f in lib.functions] and "SSL_write" in d["functions"]
    assert sorted(d["fast"] + d["slow"]) == sorted(p.function for p in lib.plans)
    assert len(d["sites"]) == sum(len(p.sites) for p in lib.plans)
    assert all(s.split()[0] in d["reasons"] for s in d["sites"])
    assert describe({lib.key: lib}) == [d]  # a mapping as discovery returns it


def test_data_is_the_library_as_plain_values() -> None:
    lib = system_libssl()
    (data,) = describe_data([lib])
    assert msgspec.convert(data, type(lib)) == lib
    assert msgspec.json.decode(msgspec.json.encode(data)) == data


def test_text_report() -> None:
    lib = system_libssl()
    text = describe_text([lib])
    lines = text.splitlines()
    assert lines[0].startswith(f"{lib.path}  [openssl") and f"dev:ino={lib.key.dev}:{lib.key.ino}" in lines[0]
    for plan in lib.plans:
        assert f"  {plan.function}: {'FAST' if plan.fast else 'SLOW'}  ({plan.reason})" in lines
        for s in plan.sites:
            assert any(line.startswith(f"    {s.role:<9} off={s.offset:#x}") for line in lines)
    assert describe_text([]) == "no TLS libraries found"
