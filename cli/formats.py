"""How `qtap run` writes events: JSON lines for programs, console or text lines for people.

- ``console``: one access line per HTTP transaction, the line the ``access_logs`` plugin writes
  (``GET http://127.0.0.1:28180/ 200 0.6ms 6B curl[9775] egress-internal``); nothing else.
- ``text``: the console line plus the headers under it (when the level keeps them), and one line
  per connection open/close, DNS message, TLS hello, gap and parse error.
- ``json``: every event as one JSON object per line.

The default (``auto``) is ``console`` when stdout is a terminal, and ``json`` when it is a pipe or a
file, or when the agent runs in a container (where stdout is collected by a log pipeline).
"""

from __future__ import annotations

import os
from typing import IO, Any, Literal

import msgspec

from qtap_async.filters import classify_connection
from qtap_async.topology.writer import StdoutWriter

__all__ = ["FORMATS", "EventCounter", "FormatWriter", "choose_format", "console_line", "in_container"]

OutputFormat = Literal["json", "text", "console"]
FORMATS: tuple[str, ...] = ("auto", "json", "text", "console")


def in_container() -> bool:
    """Whether this process runs where stdout is collected as logs: in a Kubernetes pod, or in a
    container whose runtime or image says so (podman, systemd-nspawn and the qtap image set
    ``container``). /.dockerenv alone is not taken as such: development boxes are docker containers
    too, and a person with a terminal there wants console lines."""
    # The variable is lowercase by convention (podman, systemd-nspawn).
    in_env = os.environ.get("container") or os.environ.get("KUBERNETES_SERVICE_HOST")  # noqa: SIM112
    return bool(in_env)


def choose_format(requested: str, out: IO[bytes]) -> OutputFormat:
    """The format for ``requested`` (one of FORMATS) written to ``out``."""
    if requested != "auto":
        return requested  # type: ignore[return-value]
    try:
        tty = os.isatty(out.fileno())
    except (OSError, ValueError, AttributeError):
        tty = False
    return "console" if tty and not in_container() else "json"


def _get(ev: Any, key: str, default: Any = None) -> Any:
    if isinstance(ev, dict):
        return ev.get(key, default)
    return getattr(ev, key, default)


def _type(ev: Any) -> str:
    t = _get(ev, "type")
    if isinstance(t, str):
        return t
    cfg = getattr(type(ev), "__struct_config__", None)
    tag = getattr(cfg, "tag", None)
    return tag if isinstance(tag, str) else type(ev).__name__


def _direction(ev: Any) -> str:
    d = str(_get(ev, "direction", "") or "")
    if d == "egress":  # egress-internal / egress-external, as the config's direction classes say
        return classify_connection(False, str(_get(ev, "dst_ip", "") or ""))
    return d


def _proc(ev: Any) -> str:
    exe = str(_get(ev, "exe", "") or "")
    name = exe.rsplit("/", 1)[-1] or str(_get(ev, "comm", "") or "?")
    return f"{name}[{_get(ev, 'pid', 0)}]"


def console_line(ev: Any) -> str:
    """The access line of an ``http_transaction`` event (the no-config output's mapping)."""
    scheme = _get(ev, "scheme") or ("https" if _get(ev, "tls") else "http")
    authority = _get(ev, "authority") or _get(ev, "host") or f"{_get(ev, 'dst_ip', '')}:{_get(ev, 'dst_port', '')}"
    path = _get(ev, "path") or "/"
    status = _get(ev, "status")
    ns = _get(ev, "duration_ns")
    dur = f"{ns / 1e6:.1f}ms" if isinstance(ns, int) else "-"
    size = _get(ev, "response_body_size", _get(ev, "resp_bytes", 0)) or 0
    line = (f"{_get(ev, 'method') or '-'} {scheme}://{authority}{path} {status if status is not None else '---'} "
            f"{dur} {size}B {_proc(ev)} {_direction(ev)}")
    grpc = _get(ev, "grpc")
    if isinstance(grpc, dict) and grpc.get("grpc_status") is not None:
        line += f" grpc-status={grpc['grpc_status']}"
    if _get(ev, "incomplete"):
        line += f" incomplete({_get(ev, 'reason', '')})"
    return line


def text_lines(ev: Any) -> list[str]:
    """Readable lines for any event (``text`` format)."""
    kind = _type(ev)
    if kind == "http_transaction":
        lines = [console_line(ev)]
        for prefix, key in ((">", "request_headers"), ("<", "response_headers")):
            for pair in _get(ev, key) or ():
                lines.append(f"  {prefix} {pair[0]}: {pair[1]}")
        return lines
    peer = f"{_get(ev, 'src_ip', '')}:{_get(ev, 'src_port', '')} -> {_get(ev, 'dst_ip', '')}:{_get(ev, 'dst_port', '')}"
    if kind == "connection":
        event = _get(ev, "event", "")
        line = f"conn {event} {peer} {_proc(ev)} {_direction(ev)}"
        if event == "close":
            line += (f" sent={_get(ev, 'bytes_sent', 0)}B received={_get(ev, 'bytes_received', 0)}B"
                     f" {_get(ev, 'protocol', '') or '-'} {_get(ev, 'domain', '') or ''}").rstrip()
        return [line]
    if kind == "dns_message":
        answers = _get(ev, "answers") or []
        shown = ", ".join(str(a.get("data", a) if isinstance(a, dict) else a) for a in answers[:4])
        return [f"dns {_get(ev, 'qname', '')} {shown} {_proc(ev)}".rstrip()]
    if kind == "tls_client_hello":
        return [f"tls hello sni={_get(ev, 'sni', '') or '-'} alpn={','.join(_get(ev, 'alpn') or []) or '-'} "
                f"{peer} {_proc(ev)}"]
    if kind == "gap":
        return [f"gap {_get(ev, 'bytes', 0)}B not captured ({_get(ev, 'source', '')}) conn {_get(ev, 'conn_id', '')}"
                f" {_proc(ev)}"]
    if kind == "parse_error":
        return [f"parse error {_get(ev, 'protocol', '')}: {_get(ev, 'reason', '') or _get(ev, 'message', '')} "
                f"{peer} {_proc(ev)}"]
    return [f"{kind} {msgspec.json.encode(ev).decode()}"]


class EventCounter:
    """What the stop summary reports: requests and connections written."""

    __slots__ = ("connections", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0

    def count(self, ev: Any) -> None:
        kind = _type(ev)
        if kind == "http_transaction":
            self.requests += 1
        elif kind == "connection" and _get(ev, "event") == "open":
            self.connections += 1


class FormatWriter(StdoutWriter):
    """The no-config output stage in one of the formats; counts what it wrote for the summary."""

    def __init__(self, fmt: OutputFormat, out: IO[bytes], keep: Any = None) -> None:
        super().__init__(out)
        self.fmt = fmt
        self.keep = keep
        self.counter = EventCounter()
        self.filtered = 0

    def write(self, events: list[Any]) -> None:
        keep = self.keep
        if keep is not None:
            before = len(events)
            events = [e for e in events if keep(e)]
            self.filtered += before - len(events)
        for e in events:
            self.counter.count(e)
        if self.fmt == "json":
            super().write(events)
            return
        lines: list[str] = []
        for e in events:
            if self.fmt == "console":
                if _type(e) == "http_transaction":
                    lines.append(console_line(e))
            else:
                lines.extend(text_lines(e))
        if lines:
            self.out.write(("\n".join(lines) + "\n").encode("utf-8", "replace"))
            self.out.flush()
        self.written += len(events)
