"""Counters the stages do not keep themselves: transactions by protocol, TLS libraries by probe path."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, get_args

from qtap_async.events.dns import DnsMessage
from qtap_async.events.http import HttpTransaction
from qtap_async.telemetry import metrics
from qtap_async.tls.attach import AttachStatus
from qtap_async.tls.model import LibraryKind

ProtocolRecordHandler = Callable[[Any, Any, int], list[Any]]


class TransactionCounter:
    """Protocol records by protocol, counted where every record passes (config or not): the conntrack's
    protocol-record handler, which this wraps."""

    def __init__(self) -> None:
        self.by_protocol: Counter[str] = Counter()

    def count(self, rec: Any) -> None:
        if type(rec) is HttpTransaction:
            self.by_protocol["grpc" if rec.grpc is not None else rec.protocol or "http"] += 1
        elif type(rec) is DnsMessage:
            self.by_protocol["dns"] += 1

    def wrap(self, inner: ProtocolRecordHandler) -> ProtocolRecordHandler:
        count = self.count

        def handler(conn: Any, rec: Any, layer: int) -> list[Any]:
            count(rec)
            return inner(conn, rec, layer)

        return handler

    def snapshot(self) -> dict[str, int]:
        return {metrics.TRANSACTIONS.key(protocol=p): n for p, n in sorted(self.by_protocol.items())}


def tls_snapshot(statuses: Iterable[AttachStatus]) -> dict[str, int]:
    """Libraries attached, by kind and probe path (fast: emulated probe points; slow: single-stepped), and the
    functions on each path. A library with any slow function counts as slow."""
    # Every kind on both paths, 0 until attached: the same series on every host, so a query for a kind that is
    # absent answers 0 instead of nothing.
    libs: Counter[tuple[str, str]] = Counter({(k, p): 0 for k in get_args(LibraryKind) for p in ("fast", "slow")})
    functions: Counter[str] = Counter({"fast": 0, "slow": 0})
    failed = 0
    for s in statuses:
        if not s.attached:
            failed += 1
            continue
        libs[(s.kind, "slow" if s.slow_functions else "fast")] += 1
        functions["fast"] += len(s.fast_functions)
        functions["slow"] += len(s.slow_functions)
    out = {metrics.TLS_LIBRARIES_ATTACHED.key(kind=k, path=p): n for (k, p), n in sorted(libs.items())}
    for path in ("fast", "slow"):
        out[metrics.TLS_LIBRARIES_ATTACHED_PATH.key(path=path)] = sum(n for (_, p), n in libs.items() if p == path)
        out[metrics.TLS_FUNCTIONS_ATTACHED.key(path=path)] = functions[path]
    out[metrics.TLS_LIBRARIES_FAILED.name] = failed
    return out
