"""The truth side of the ground-truth suite: what a scenario expects, what the agent captured, and a diff.

A scenario builds `ExpConn` / `ExpTx` values only from what its own processes observed. `Captured` groups
the agent's events by connection. `compare` matches expected to captured by (direction, 4-tuple), compares
every field, and also reports every captured record that touches the scenario (its pids or its server
ports) without matching any expected one: phantoms and stolen traffic show up there.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

ABSENT = "<absent>"


class Pred:
    """An expected value that is a condition rather than one value (e.g. "contains 'limit'")."""

    def __init__(self, text: str, fn: Callable[[Any], bool]) -> None:
        self.text = text
        self.fn = fn

    def __repr__(self) -> str:
        return self.text


def exe_of(name: str) -> str:
    """The real path of a program as the kernel reports it in /proc/PID/exe."""
    path = name if os.path.isabs(name) else (shutil.which(name) or name)
    return os.path.realpath(path)


def user_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def cgroup_of(pid: int | str = "self") -> str:
    """The cgroup v2 path of a process (children inherit the test's own)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return ""


def plain_ip(ip: str) -> str:
    """A v4-mapped IPv6 address as the IPv4 address it carries (the contract's dual-stack rule)."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def is_loopback(ip: str) -> bool:
    ip = plain_ip(ip)
    return ip.startswith("127.") or ip == "::1" or ip == ""  # "" : a phantom's missing address


def family_of(ip: str) -> str:
    return "ipv4" if "." in plain_ip(ip) else "ipv6"


NO_OWN_NAME = Pred("'' or a host-wide name", lambda v: isinstance(v, str))
NO_OWN_SOURCE = Pred("'', dns_host or hosts", lambda v: v in ("", "dns_host", "hosts"))


@dataclass
class Proc:
    pid: int
    exe: str
    uid: int = 0

    @property
    def user(self) -> str:
        return user_of(self.uid)


@dataclass
class ExpTx:
    """One HTTP transaction as seen by one end."""

    pid: int
    exe: str
    method: str
    path: str | Pred
    status: int | Pred
    host: str = ""
    protocol: str = "http/1.1"
    tls: bool = False
    request_body_size: int | None = None
    response_body_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # further fields (incomplete, pushed, ...)

    def fields(self) -> dict[str, Any]:
        f: dict[str, Any] = {"pid": self.pid, "exe": self.exe, "method": self.method, "path": self.path,
                             "status": self.status, "host": self.host, "protocol": self.protocol, "tls": self.tls}
        if self.request_body_size is not None:
            f["request_body_size"] = self.request_body_size
        if self.response_body_size is not None:
            f["response_body_size"] = self.response_body_size
        f.update(self.extra)
        return f


@dataclass
class ExpConn:
    """One connection as seen by one end (`egress`: the end that connected; `ingress`: the one that accepted)."""

    label: str
    direction: str
    proc: Proc
    src: tuple[str, int]  # the initiator
    dst: tuple[str, int]  # the acceptor
    bytes_sent: int | Pred
    bytes_received: int | Pred
    transport: str = "tcp"
    tls: bool = False
    protocol: str | None = "http1"
    domain: str = ""
    domain_source: str | None = None
    midstream: bool = False
    owners: list[tuple[int, str]] | Pred | None = None  # (pid, exe) in order of first I/O, opener first
    cgroup: str | None = None
    txs: list[ExpTx] = field(default_factory=list)
    segments: list[tuple[int, int]] | None = None  # resumed connection: (sent, received) per open..close
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple[str, str, int, str, int]:
        return (self.direction, plain_ip(self.src[0]), self.src[1], plain_ip(self.dst[0]), self.dst[1])

    def fields(self) -> dict[str, Any]:
        f: dict[str, Any] = {
            "pid": self.proc.pid, "exe": self.proc.exe, "user": self.proc.user, "uid": self.proc.uid,
            "cgroup": self.cgroup if self.cgroup is not None else cgroup_of(),
            "family": family_of(self.src[0]), "direction": self.direction, "transport": self.transport,
            "src_ip": plain_ip(self.src[0]), "src_port": self.src[1],
            "dst_ip": plain_ip(self.dst[0]), "dst_port": self.dst[1],
            "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
            "tls": self.tls, "domain": self.domain, "midstream": self.midstream,
            "opens": 1 if self.segments is None else len(self.segments),
            "reason": "closed",
            "owners": self.owners if self.owners is not None else ABSENT,
        }
        if self.protocol is not None:
            f["protocol"] = self.protocol
        if self.domain_source is not None:
            f["domain_source"] = self.domain_source
        if self.domain == "" or is_ip(self.domain):
            # An address (Host: 127.0.0.1:port) names nothing. Nothing of its own names this connection (no
            # SNI, Host name or DNS of its process): the contract's lowest sources (host-wide DNS, the hosts
            # file) may still name it.
            f["domain"] = NO_OWN_NAME
            f["domain_source"] = NO_OWN_SOURCE
        if self.segments is not None:
            f["segments"] = self.segments
        f.update(self.extra)
        return f


@dataclass
class CapConn:
    conn_id: int
    opens: list[dict[str, Any]] = field(default_factory=list)
    closes: list[dict[str, Any]] = field(default_factory=list)
    txs: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)

    def first(self) -> dict[str, Any]:
        return (self.opens or self.closes)[0]

    def last(self) -> dict[str, Any]:
        return (self.closes or self.opens)[-1]

    def key(self) -> tuple[str, str, int, str, int]:
        e = self.last()
        return (e.get("direction", ""), e.get("src_ip", ""), e.get("src_port", 0), e.get("dst_ip", ""),
                e.get("dst_port", 0))

    def fields(self) -> dict[str, Any]:
        o, c = self.first(), self.last()
        # Connection events omit fields at their default value; fields the event type does not have yet
        # stay <absent>.
        f: dict[str, Any] = {k: c.get(k, ABSENT) for k in (
            "pid", "exe", "uid", "family", "direction", "src_ip", "src_port", "dst_ip", "dst_port")}
        for k in ("user", "cgroup", "domain", "domain_source", "protocol"):
            f[k] = c.get(k, "")
        f["transport"] = c.get("transport", "tcp")
        f["tls"] = bool(c.get("tls", False))
        f["midstream"] = bool(o.get("midstream", False))
        f["bytes_sent"] = sum(e.get("bytes_sent", 0) for e in self.closes)
        f["bytes_received"] = sum(e.get("bytes_received", 0) for e in self.closes)
        f["opens"] = len(self.opens)
        reasons = [e.get("reason", "") for e in self.closes]
        f["reason"] = reasons[-1] if reasons else "<no close>"
        owners = c.get("owners")
        f["owners"] = [(ow.get("pid"), ow.get("exe")) for ow in owners] if owners else ABSENT
        f["segments"] = [(e.get("bytes_sent", 0), e.get("bytes_received", 0)) for e in self.closes]
        f["resumed"] = [bool(e.get("resumed", False)) for e in self.opens]
        # Fields only an open/close pair can contradict: the open must describe the same connection.
        for k in ("pid", "src_port", "dst_port", "direction"):
            if self.opens and self.opens[0].get(k) != c.get(k):
                f[f"open.{k}"] = self.opens[0].get(k)
        return f


class Captured:
    """The agent's output grouped by connection."""

    def __init__(self, events: Iterable[Any]) -> None:
        self.conns: dict[int, CapConn] = {}
        self.orphan_txs: list[dict[str, Any]] = []
        self.other: list[dict[str, Any]] = []
        for ev in events:
            e = ev if isinstance(ev, dict) else msgspec.to_builtins(ev)
            t = e.get("type")
            cid = e.get("conn_id")
            if t == "connection" and isinstance(cid, int):
                c = self.conns.setdefault(cid, CapConn(cid))
                (c.opens if e.get("event") == "open" else c.closes).append(e)
            elif t == "http_transaction" and isinstance(cid, int):
                self.conns.setdefault(cid, CapConn(cid)).txs.append(e)
            elif t == "gap" and isinstance(cid, int):
                self.conns.setdefault(cid, CapConn(cid)).gaps.append(e)
            else:
                self.other.append(e)
        for c in self.conns.values():
            c.txs.sort(key=lambda e: str(e.get("ts", "")))
        self.by_key: dict[tuple[str, str, int, str, int], list[CapConn]] = defaultdict(list)
        for c in self.conns.values():
            if c.opens or c.closes:
                self.by_key[c.key()].append(c)

    def where(self, exp: ExpConn) -> str:
        """Where an expected connection's transactions went instead (the record that swallowed them)."""
        want = {(t.method, t.path) for t in exp.txs if isinstance(t.path, str)}
        if not want:
            return ""
        for c in self.conns.values():
            if c.key()[0] == exp.direction and any((t.get("method"), t.get("path")) in want for t in c.txs):
                e = c.last()
                return (f"; its transactions are on conn_id {c.conn_id}: pid={e.get('pid')} exe={e.get('exe')} "
                        f"{e.get('src_ip')}:{e.get('src_port')}->{e.get('dst_ip')}:{e.get('dst_port')} "
                        f"midstream={c.first().get('midstream', False)} opens={len(c.opens)} closes={len(c.closes)}")
        return "; none of its transactions anywhere"

    def touching(self, pids: set[int], ports: set[int], windows: dict[int, tuple[int, int | None]] | None = None,
                 port_windows: dict[int, tuple[int, int | None]] | None = None, since: int = 0) -> list[CapConn]:
        """Records of the scenario's processes (while they lived, when `windows` says), or on a loopback address
        at one of its server ports (the same port number on another address is someone else's)."""
        out = []
        for c in self.conns.values():
            evs = c.opens + c.closes + c.txs
            start = next((e.get("ts_ns") for e in c.opens + c.closes if isinstance(e.get("ts_ns"), int)), None)

            def alive(key: Any, table: dict[int, tuple[int, int | None]] | None, start: int | None = start) -> bool:
                # Pids and ports are reused: one is the scenario's only while its process or server lived.
                w = (table or {}).get(key) or (since, None)
                if start is None:
                    return True
                slack = 2_000_000_000  # clocks of the agent's events and of the test differ a little
                return w[0] - slack <= start <= (w[1] if w[1] is not None else start) + slack

            def on_port(e: dict[str, Any], side: str) -> bool:
                port = e.get(f"{side}_port")
                return (port in ports and is_loopback(str(e.get(f"{side}_ip", "")))
                        and alive(port, port_windows))

            if any((e.get("pid") in pids and alive(e.get("pid"), windows)) or on_port(e, "dst") or on_port(e, "src")
                   for e in evs):
                out.append(c)
        return out


@dataclass
class Mismatch:
    item: str
    field: str
    expected: Any
    captured: Any


def _same(exp: Any, cap: Any) -> bool:
    if isinstance(exp, Pred):
        try:
            return bool(exp.fn(cap))
        except Exception:
            return False
    if isinstance(exp, list) and isinstance(cap, list):
        return len(exp) == len(cap) and all(_same(a, b) for a, b in zip(exp, cap, strict=True))
    if isinstance(exp, tuple) and isinstance(cap, tuple | list):
        return len(exp) == len(cap) and all(_same(a, b) for a, b in zip(exp, cap, strict=True))
    return bool(exp == cap)


def _tx_fields(e: dict[str, Any], want: Iterable[str]) -> dict[str, Any]:
    return {k: e.get(k, ABSENT) for k in want}


@dataclass
class Report:
    expected_conns: int = 0
    expected_txs: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    matched_conns: int = 0
    wrong_conns: int = 0  # matched but with at least one wrong field
    missing_conns: int = 0
    unexpected_conns: int = 0
    missing_txs: int = 0
    wrong_txs: int = 0
    unexpected_txs: int = 0

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("expected_conns", "expected_txs", "matched_conns", "wrong_conns",
                                              "missing_conns", "unexpected_conns", "missing_txs", "wrong_txs",
                                              "unexpected_txs")}

    def table(self, limit: int = 80) -> str:
        rows = [("item", "field", "expected", "captured")]
        # Whole records missing or unexpected first: they are what a long list of field diffs would hide.
        first = [m for m in self.mismatches if m.field in ("connection", "transaction")]
        ordered = first + [m for m in self.mismatches if m.field not in ("connection", "transaction")]
        for m in ordered[:limit]:
            rows.append((m.item, m.field, _short(m.expected), _short(m.captured)))
        widths = [min(cap, max(len(r[i]) for r in rows)) for i, cap in enumerate((64, 16, 70, 200))]
        lines = [" | ".join(r[i][: widths[i]].ljust(widths[i]) for i in range(4)) for r in rows]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        more = len(self.mismatches) - limit
        if more > 0:
            lines.append(f"... {more} more mismatches")
        lines.append("counts: " + ", ".join(f"{k}={v}" for k, v in self.counts().items()))
        return "\n".join(lines)


def _short(v: Any) -> str:
    s = repr(v) if not isinstance(v, str) else v
    return s if len(s) <= 200 else s[:197] + "..."


def compare(expected: list[ExpConn], cap: Captured, *, pids: Iterable[int] = (), ports: Iterable[int] = (),
            allow_unexpected: Callable[[CapConn], bool] | None = None,
            windows: dict[int, tuple[int, int | None]] | None = None,
            port_windows: dict[int, tuple[int, int | None]] | None = None, since: int = 0) -> Report:
    """Diff every field of every expected connection and transaction against what was captured.

    `pids`/`ports`: the scenario's own processes and server ports; every captured connection touching
    them that no expected one claims is reported as unexpected (a phantom or a misattributed record).
    """
    rep = Report(expected_conns=len(expected), expected_txs=sum(len(e.txs) for e in expected))
    claimed: set[int] = set()
    used: dict[tuple[str, str, int, str, int], int] = defaultdict(int)
    for exp in expected:
        k = exp.key()
        cands = cap.by_key.get(k, [])
        i = used[k]
        used[k] += 1
        item = f"{exp.label} {exp.direction} {k[1]}:{k[2]}->{k[3]}:{k[4]}"
        if i >= len(cands):
            rep.missing_conns += 1
            rep.missing_txs += len(exp.txs)
            rep.mismatches.append(Mismatch(item, "connection", "present", "missing" + cap.where(exp)))
            continue
        c = cands[i]
        claimed.add(c.conn_id)
        rep.matched_conns += 1
        got = c.fields()
        bad = False
        ef = exp.fields()
        for name, want in ef.items():
            have = got.get(name, c.last().get(name, ABSENT))
            if not _same(want, have):
                bad = True
                rep.mismatches.append(Mismatch(item, name, want, have))
        for name in [n for n in got if n.startswith("open.")]:
            bad = True
            rep.mismatches.append(Mismatch(item, name, ef.get(name[5:]), got[name]))
        if exp.segments is not None:
            want_res = [False] + [True] * (len(exp.segments) - 1)
            if got["resumed"] != want_res:
                bad = True
                rep.mismatches.append(Mismatch(item, "resumed", want_res, got["resumed"]))
        rep.wrong_conns += bad
        # Transactions, in order.
        for j, etx in enumerate(exp.txs):
            titem = f"{item} tx#{j} {etx.method} {str(etx.path)[:40]}"
            if j >= len(c.txs):
                rep.missing_txs += 1
                rep.mismatches.append(Mismatch(titem, "transaction", "present", "missing"))
                continue
            want_f = etx.fields()
            have_f = _tx_fields(c.txs[j], want_f)
            tbad = False
            for name, want in want_f.items():
                if not _same(want, have_f[name]):
                    tbad = True
                    rep.mismatches.append(Mismatch(titem, name, want, have_f[name]))
            rep.wrong_txs += tbad
        for extra_tx in c.txs[len(exp.txs):]:
            rep.unexpected_txs += 1
            got_tx = f"{extra_tx.get('method')} {extra_tx.get('path')} pid={extra_tx.get('pid')}"
            rep.mismatches.append(Mismatch(item, "transaction", "absent", got_tx))
    for c in cap.touching(set(pids), set(ports), windows, port_windows, since):
        if c.conn_id in claimed or (allow_unexpected is not None and allow_unexpected(c)):
            continue
        e = c.last()
        rep.unexpected_conns += 1
        rep.unexpected_txs += len(c.txs)
        rep.mismatches.append(Mismatch(
            f"conn_id {c.conn_id}", "connection", "absent",
            f"{e.get('direction')} pid={e.get('pid')} exe={e.get('exe')} {e.get('src_ip')}:{e.get('src_port')}->"
            f"{e.get('dst_ip')}:{e.get('dst_port')} opens={len(c.opens)} closes={len(c.closes)} "
            f"midstream={c.first().get('midstream', False)} bytes={e.get('bytes_sent')}/{e.get('bytes_received')} "
            f"txs={len(c.txs)}"))
    return rep
