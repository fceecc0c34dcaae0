"""Links: a program attached to a hook, as a small closable object."""

from __future__ import annotations

from qtap_async.bpf._libbpf import libbpf


class Link:
    """An attachment; `close()` detaches it. Closing twice is harmless."""

    __slots__ = ("_ptr", "description")

    def __init__(self, ptr: int, description: str) -> None:
        self._ptr: int | None = ptr
        self.description = description

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def close(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr:
            libbpf().bpf_link__destroy(ptr)

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._ptr is None else "attached"
        return f"<Link {self.description} {state}>"
