"""Links: a program attached to a hook, as a small closable object."""

from __future__ import annotations

import os

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
        state = "closed" if self.closed else "attached"
        return f"<Link {self.description} {state}>"


class FdLink(Link):
    """A link the kernel gave as a bare fd (created with bpf(2), not libbpf): closing the fd detaches it."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int, description: str) -> None:
        super().__init__(0, description)
        self._ptr = None
        self._fd: int | None = fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def close_links(links: list[Link]) -> None:
    """Close links concurrently. A detach waits for a kernel grace period (measured here: ~190 ms for a
    classic uprobe, ~35 ms for a uprobe_multi link, ~100 ms for a tracepoint), and waits in parallel threads
    overlap: the closes are system calls that release the GIL."""
    if len(links) <= 1:
        for link in links:
            link.close()
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(32, len(links)), thread_name_prefix="qtap-detach") as pool:
        list(pool.map(lambda link: link.close(), links))
