"""What a plugin sees of one HTTP transaction: the transaction, its connection and process context
(``qtap_async.events.ConnContext``), and a rule context over both.

An ``HttpExchange`` is built once per transaction and handed to every plugin of the selected stack, so
the derived values (host, URL, joined headers, the rule context) are computed at most once.
"""

from __future__ import annotations

from collections.abc import Callable

from qtap_async.context.domains import host_of
from qtap_async.events.context import ConnContext
from qtap_async.events.http import Headers, HttpTransaction
from qtap_async.plugins.redact import DEFAULT_REDACTOR, Redactor

__all__ = ["ExchangeContext", "HttpExchange", "host_of", "join_headers"]


def join_headers(headers: Headers) -> dict[str, str]:
    """Headers by lowercased name; a header sent more than once has its values joined with ", "."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        prev = out.get(key)
        out[key] = value if prev is None else f"{prev}, {value}"
    return out


class HttpExchange:
    """One transaction with its context. ``id`` names it in every event and object it produces."""

    __slots__ = ("_ctx", "_req_headers", "_res_headers", "conn", "host", "id", "redactor", "scheme", "ts", "ts_ns",
                 "tx")

    def __init__(self, tx: HttpTransaction, conn: ConnContext, *, id: str, ts: str, ts_ns: int,
                 redactor: Redactor | None = None) -> None:
        self.tx = tx
        #: What outputs (objects, access logs) pass headers and targets through; rules see ``tx`` as is.
        self.redactor = redactor or DEFAULT_REDACTOR
        self.conn = conn
        self.id = id
        #: Wall-clock start of the transaction: RFC 3339 text and epoch nanoseconds.
        self.ts = ts
        self.ts_ns = ts_ns
        self.host = host_of(tx.authority) or host_of(conn.domain)
        self.scheme = tx.scheme or ("https" if conn.tls else "http")
        self._req_headers: dict[str, str] | None = None
        self._res_headers: dict[str, str] | None = None
        self._ctx: ExchangeContext | None = None

    @property
    def request_headers(self) -> dict[str, str]:
        if self._req_headers is None:
            self._req_headers = join_headers(self.tx.request_headers)
        return self._req_headers

    @property
    def response_headers(self) -> dict[str, str]:
        if self._res_headers is None:
            self._res_headers = join_headers(self.tx.response_headers)
        return self._res_headers

    @property
    def url(self) -> str:
        authority = self.tx.authority or self.host
        return f"{self.scheme}://{authority}{self.tx.path or ''}"

    @property
    def shown_url(self) -> str:
        """``url`` with secret query values redacted (what an output may print)."""
        authority = self.tx.authority or self.host
        return f"{self.scheme}://{authority}{self.redactor.target(self.tx.path) or ''}"

    @property
    def duration_ns(self) -> int:
        tx = self.tx
        if tx.response_end_ns and tx.request_start_ns:
            return max(0, tx.response_end_ns - tx.request_start_ns)
        return 0

    @property
    def context(self) -> ExchangeContext:
        """The rule context of this exchange (see docs/config.md, "Fields")."""
        if self._ctx is None:
            self._ctx = ExchangeContext(self)
        return self._ctx


class ExchangeContext:
    """``get(field)`` for rulekit: the documented fields of one exchange, None when missing."""

    __slots__ = ("_ex",)

    def __init__(self, ex: HttpExchange) -> None:
        self._ex = ex

    def get(self, field: str, /) -> str | int | float | None:
        ex = self._ex
        if field.startswith("http.req.headers."):
            return ex.request_headers.get(field[17:])
        if field.startswith("http.res.headers."):
            return ex.response_headers.get(field[17:])
        getter = _FIELDS.get(field)
        return getter(ex) if getter is not None else None


def _or_none(value: str) -> str | None:
    return value or None


_FIELDS: dict[str, Callable[[HttpExchange], str | int | float | None]] = {
    "http.req.method": lambda ex: ex.tx.method,
    "http.req.path": lambda ex: ex.tx.path,
    "http.req.host": lambda ex: _or_none(ex.host),
    "http.req.url": lambda ex: ex.url if ex.tx.path is not None else None,
    "http.res.status": lambda ex: ex.tx.status,
    "process.exe": lambda ex: _or_none(ex.conn.exe),
    "process.pid": lambda ex: ex.conn.pid,
    "conn.direction": lambda ex: ex.conn.traffic,  # the rules' name for the classified direction
    "conn.remote_ip": lambda ex: _or_none(ex.conn.remote_ip),
}
