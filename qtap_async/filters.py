"""Which traffic to capture: process (exe) filters, direction and loopback checks, endpoint stacks.

Everything here is compiled once from the config and then called per connection, so the matchers are
plain functions over precomputed sets and tuples.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from qtap_async.config import EndpointConfig, FiltersConfig, TapConfig

MatchStrategy = Literal["exact", "prefix", "suffix", "contains", "regex"]
MATCH_STRATEGIES: tuple[MatchStrategy, ...] = ("exact", "prefix", "suffix", "contains", "regex")

Direction = Literal["all", "ingress", "egress", "egress-internal", "egress-external"]
DIRECTIONS: tuple[Direction, ...] = ("all", "ingress", "egress", "egress-internal", "egress-external")

#: The direction of one connection, as the capture engine classifies it.
ConnDirection = Literal["ingress", "egress-internal", "egress-external"]

ProcessGroup = Literal["qpoint", "kubernetes", "container", "gke", "eks"]
PROCESS_GROUPS: tuple[ProcessGroup, ...] = ("qpoint", "kubernetes", "container", "gke", "eks")

#: Executables each predefined group ignores (best effort; add custom filters for anything missing).
GROUP_FILTERS: dict[str, tuple[tuple[str, MatchStrategy], ...]] = {
    # The agent itself: its own sink traffic (Kafka, S3, Pulse) must never feed back into capture.
    "qpoint": (("/qtap", "suffix"), ("/qtap-async", "suffix"), ("/qpoint", "suffix"), ("/pulse", "suffix")),
    "kubernetes": (
        ("/kubelet", "suffix"),
        ("/kube-proxy", "suffix"),
        ("/kube-apiserver", "suffix"),
        ("/kube-controller-manager", "suffix"),
        ("/kube-scheduler", "suffix"),
        ("/etcd", "suffix"),
        ("/coredns", "suffix"),
    ),
    "container": (
        ("/containerd", "suffix"),
        ("/containerd-shim", "contains"),
        ("/dockerd", "suffix"),
        ("/docker-proxy", "suffix"),
        ("/runc", "suffix"),
        ("/crio", "suffix"),
        ("/conmon", "suffix"),
    ),
    "gke": (
        ("/gke-metadata-server", "suffix"),
        ("/gke-metrics-agent", "suffix"),
        ("/netd", "suffix"),
        ("/fluent-bit", "suffix"),
    ),
    "eks": (
        ("/aws-k8s-agent", "suffix"),
        ("/aws-node", "suffix"),
        ("/amazon-ssm-agent", "suffix"),
        ("/amazon-cloudwatch-agent", "suffix"),
    ),
}


# -- executables --------------------------------------------------------------------------------


class ExeFilter:
    """One executable matcher. ``regex`` searches anywhere in the path (anchor with ^ and $)."""

    __slots__ = ("exe", "match", "only", "strategy")

    def __init__(self, exe: str, strategy: MatchStrategy = "exact", only: Sequence[str] = ()) -> None:
        if strategy not in MATCH_STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(MATCH_STRATEGIES)}")
        self.exe = exe
        self.strategy = strategy
        #: What to skip for a matching process (data, dns, tls, http); empty means everything.
        self.only = tuple(only)
        self.match: Callable[[str], bool] = _matcher(exe, strategy)

    def __repr__(self) -> str:
        return f"ExeFilter({self.exe!r}, {self.strategy!r})"


def _matcher(exe: str, strategy: MatchStrategy) -> Callable[[str], bool]:
    if strategy == "exact":
        return lambda path: path == exe
    if strategy == "prefix":
        return lambda path: path.startswith(exe)
    if strategy == "suffix":
        return lambda path: path.endswith(exe)
    if strategy == "contains":
        return lambda path: exe in path
    search = re.compile(exe).search  # re.error reaches the caller; config validation checks first
    return lambda path: search(path) is not None


class ProcessFilter:
    """All exe filters of the config (groups expanded). ``ignores(exe)`` is the per-process check."""

    __slots__ = ("_contains", "_exact", "_filters", "_prefixes", "_regexes", "_suffixes")

    def __init__(self, filters: Iterable[ExeFilter]) -> None:
        self._filters = tuple(filters)
        plain = [f for f in self._filters if not f.only]
        self._exact = frozenset(f.exe for f in plain if f.strategy == "exact")
        self._prefixes = tuple(f.exe for f in plain if f.strategy == "prefix")
        self._suffixes = tuple(f.exe for f in plain if f.strategy == "suffix")
        self._contains = tuple(f.exe for f in plain if f.strategy == "contains")
        self._regexes = tuple(f.match for f in plain if f.strategy == "regex")

    @classmethod
    def from_config(cls, filters: FiltersConfig) -> ProcessFilter:
        out: list[ExeFilter] = []
        for group in filters.groups:
            out.extend(ExeFilter(exe, strategy) for exe, strategy in GROUP_FILTERS[group])
        out.extend(ExeFilter(f.exe, f.strategy, f.only) for f in filters.custom)
        return cls(out)

    @property
    def filters(self) -> tuple[ExeFilter, ...]:
        return self._filters

    def ignores(self, exe: str) -> bool:
        """Whether a process running ``exe`` is ignored entirely (filters without ``only``)."""
        if exe in self._exact:
            return True
        if self._prefixes and exe.startswith(self._prefixes):
            return True
        if self._suffixes and exe.endswith(self._suffixes):
            return True
        for part in self._contains:
            if part in exe:
                return True
        return any(match(exe) for match in self._regexes)

    def match(self, exe: str) -> ExeFilter | None:
        """The first filter (any kind, in config order: groups first) matching ``exe``."""
        for f in self._filters:
            if f.match(exe):
                return f
        return None

    def skipped(self, exe: str) -> frozenset[str]:
        """What to skip for ``exe``: {"data", "dns", "tls", "http"} for an ignored process, the union of
        the matching filters' ``only`` lists otherwise (empty when nothing matches)."""
        if self.ignores(exe):
            return SKIP_ALL
        out: set[str] = set()
        for f in self._filters:
            if f.only and f.match(exe):
                out.update(f.only)
        # The shared empty set when nothing matches: dispatch keeps the answer per open connection, and
        # each frozenset() is a new 216-byte object.
        return frozenset(out) if out else SKIP_NOTHING


SKIP_ALL: frozenset[str] = frozenset({"data", "dns", "tls", "http"})
SKIP_NOTHING: frozenset[str] = frozenset()


# -- addresses and directions -------------------------------------------------------------------

_INTERNAL_V4 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16")
)
_INTERNAL_V6 = tuple(ipaddress.IPv6Network(n) for n in ("::1/128", "fe80::/10", "fc00::/7"))

IpLike = str | bytes | int | ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(ip: IpLike) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address from text, 4 or 16 raw bytes, an int, or an address; IPv4-mapped IPv6 becomes IPv4.

    Raises ValueError for anything else.
    """
    if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        addr = ip
    elif isinstance(ip, bytes):
        if len(ip) not in (4, 16):
            raise ValueError(f"an address is 4 or 16 bytes, not {len(ip)}")
        addr = ipaddress.ip_address(ip)
    elif isinstance(ip, str):
        addr = _parse_text(ip)
    else:
        addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@lru_cache(maxsize=8192)
def _parse_text(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def is_loopback(ip: IpLike) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback. False for text that is not an address."""
    try:
        return parse_ip(ip).is_loopback
    except ValueError:
        return False


def is_internal(ip: IpLike) -> bool:
    """RFC 1918, loopback, link-local (169.254/16, fe80::/10) or unique-local (fc00::/7).

    Anything that is not a valid address counts as external: it cannot be shown to be internal.
    """
    try:
        addr = parse_ip(ip)
    except ValueError:
        return False
    nets = _INTERNAL_V4 if addr.version == 4 else _INTERNAL_V6
    return any(addr in net for net in nets)


def classify_connection(ingress: bool, remote_ip: IpLike) -> ConnDirection:
    """``ingress`` for accepted connections, else egress-internal or egress-external by remote address."""
    if ingress:
        return "ingress"
    return "egress-internal" if is_internal(remote_ip) else "egress-external"


def direction_allowed(setting: Direction, conn: ConnDirection) -> bool:
    """Whether ``tap.direction`` = ``setting`` captures a connection of direction ``conn``."""
    if setting == "all":
        return True
    if setting == "egress":
        return conn != "ingress"
    return setting == conn


@dataclass(frozen=True, slots=True)
class TrafficFilter:
    """The tap section's connection-level decisions, compiled once."""

    direction: Direction
    ignore_loopback: bool
    processes: ProcessFilter

    @classmethod
    def from_config(cls, tap: TapConfig) -> TrafficFilter:
        return cls(tap.direction, tap.ignore_loopback, ProcessFilter.from_config(tap.filters))

    def captures(self, *, ingress: bool, remote_ip: IpLike, exe: str | None) -> bool:
        """Whether a connection is captured at all (skips per ``only`` level are separate)."""
        if self.ignore_loopback and is_loopback(remote_ip):
            return False
        if not direction_allowed(self.direction, classify_connection(ingress, remote_ip)):
            return False
        return not (exe is not None and self.processes.ignores(exe))


# -- endpoints ----------------------------------------------------------------------------------


class StackSelector:
    """Picks the stack for a connection's host: the first endpoint whose domain matches, else the
    tap-wide stack. ``*.example.com`` matches subdomains (not example.com itself). "" and "none" mean
    "no stack" and select None."""

    __slots__ = ("_default", "_exact", "_wildcards")

    def __init__(self, default: str, endpoints: Iterable[tuple[str, str]]) -> None:
        self._default = _stack_or_none(default)
        self._exact: dict[str, str | None] = {}
        wildcards: list[tuple[str, str | None]] = []
        for domain, stack in endpoints:
            d = domain.lower().rstrip(".")
            if d.startswith("*."):
                wildcards.append((d[1:], _stack_or_none(stack)))
            else:
                self._exact.setdefault(d, _stack_or_none(stack))
        self._wildcards = tuple(wildcards)

    @classmethod
    def from_config(cls, tap: TapConfig) -> StackSelector:
        endpoints: list[EndpointConfig] = list(tap.endpoints)
        return cls(tap.http.stack, [(e.domain, e.http.stack) for e in endpoints])

    def select(self, host: str | None) -> str | None:
        if host:
            if host.count(":") == 1:  # host:port (IPv6 literals have more colons)
                host = host.partition(":")[0]
            h = host.lower().rstrip(".")
            if h in self._exact:
                return self._exact[h]
            for suffix, stack in self._wildcards:
                if h.endswith(suffix):
                    return stack
        return self._default


def _stack_or_none(name: str) -> str | None:
    return None if name in ("", "none") else name


# -- focus: what a person chasing one service asked for on the command line ---------------------


class DomainMatcher:
    """Host names as endpoints are written: ``api.example.com`` exactly, ``*.example.com`` any
    subdomain (not the bare domain), case-insensitive, trailing dot and ``:port`` ignored."""

    __slots__ = ("_exact", "_suffixes")

    def __init__(self, domains: Iterable[str]) -> None:
        exact: set[str] = set()
        suffixes: list[str] = []
        for d in domains:
            d = d.lower().rstrip(".")
            if d.startswith("*."):
                suffixes.append(d[1:])
            else:
                exact.add(d)
        self._exact = frozenset(exact)
        self._suffixes = tuple(suffixes)

    def matches(self, host: str) -> bool:
        if host.count(":") == 1:
            host = host.partition(":")[0]
        h = host.lower().rstrip(".")
        return h in self._exact or (bool(self._suffixes) and h.endswith(self._suffixes))


@dataclass(frozen=True, slots=True)
class Focus:
    """Inclusion filters (the config's exe filters exclude; these keep only what matches).

    Each kind given must match; within a kind any value may. Ports match either end of the
    connection, ``exe`` filters use the config's match strategies, containers match an id prefix
    (as `docker ps` shows 12 characters) and domains match SNI / Host / DNS names.
    """

    direction: Direction = "all"
    ports: frozenset[int] = frozenset()
    exes: tuple[ExeFilter, ...] = ()
    containers: tuple[str, ...] = ()
    domains: DomainMatcher | None = None

    @property
    def empty(self) -> bool:
        return (self.direction == "all" and not self.ports and not self.exes and not self.containers
                and self.domains is None)

    def connection(self, *, ingress: bool, remote_ip: IpLike, lport: int, rport: int, exe: str,
                   container_id: str) -> bool:
        """Whether a connection can be in focus from what is known when it opens (domain aside)."""
        if not direction_allowed(self.direction, classify_connection(ingress, remote_ip)):
            return False
        if self.ports and lport not in self.ports and rport not in self.ports:
            return False
        if self.exes and not any(f.match(exe) for f in self.exes):
            return False
        return not (self.containers and not (container_id and container_id.startswith(self.containers)))

    def domain(self, host: str) -> bool:
        """Whether a connection or transaction for ``host`` ("" when unknown) is in focus."""
        return self.domains is None or (bool(host) and self.domains.matches(host))


# -- our own services ---------------------------------------------------------------------------


class OwnServices:
    """The endpoints of the services the agent reports to (Pulse, the control plane), by address.

    Recognised by what they are, not by an executable name: any connection to one of these
    endpoints (egress) or accepted on one (ingress, e.g. Pulse's own side on this host) is the
    agent's reporting traffic, or another agent's, and capturing it would feed Pulse its own
    ingestion. Host names are resolved once, when the config is compiled.
    """

    __slots__ = ("endpoints",)

    def __init__(self, endpoints: Iterable[tuple[str, int]] = ()) -> None:
        keys: set[tuple[str, int]] = set()
        for ip, port in endpoints:
            try:
                keys.add((str(parse_ip(ip)), port))
            except ValueError:  # e.g. a scoped link-local address (fe80::1%eth0): never a socket address here
                continue
        self.endpoints: frozenset[tuple[str, int]] = frozenset(keys)

    @classmethod
    def from_urls(cls, urls: Iterable[str]) -> OwnServices:
        import socket
        from urllib.parse import urlsplit

        out: list[tuple[str, int]] = []
        for url in urls:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            host = parts.hostname
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                continue
            if not host:
                continue
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:  # not resolvable now: the store reports that when it starts
                continue
            out.extend((str(info[4][0]), port) for info in infos)
        return cls(out)

    def __bool__(self) -> bool:
        return bool(self.endpoints)

    def involves(self, *, ingress: bool, local: tuple[IpLike, int], remote: tuple[IpLike, int]) -> bool:
        """Whether a connection goes to one of our services (egress) or is accepted by one (ingress)."""
        ip, port = local if ingress else remote
        try:
            key = (str(parse_ip(ip)), port)
        except ValueError:
            return False
        if key in self.endpoints:
            return True
        # Loopback is this host whichever family or address (127.0.0.2, ::1) the name resolved to.
        return is_loopback(ip) and any(p == port and is_loopback(a) for a, p in self.endpoints)
