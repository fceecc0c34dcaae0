"""Flatten a library's plans into the probes to attach (the same offset may serve several plans)."""

from __future__ import annotations

from qtap_async.tls.model import Attachment, TlsLibrary


def attachments(lib: TlsLibrary) -> list[Attachment]:
    """Every distinct probe of ``lib``'s plans, ordered by offset. Attach each once per file."""
    merged: dict[tuple[int, bool], list[str]] = {}
    emulated: dict[tuple[int, bool], bool] = {}
    for plan in lib.plans:
        for site in plan.sites:
            key = (site.offset, site.role == "uretprobe")
            merged.setdefault(key, []).append(f"{plan.function}:{site.role}")
            emulated[key] = site.emulated
    return [
        Attachment(offset=off, retprobe=ret, roles=merged[(off, ret)], emulated=emulated[(off, ret)])
        for off, ret in sorted(merged)
    ]
