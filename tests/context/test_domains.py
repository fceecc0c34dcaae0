"""Domain precedence (sni > host > dns > dns_host > hosts), the hosts-file source and its reloads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtap_async.context.dns_cache import DnsCache
from qtap_async.context.domains import Domains, HostsFiles, offer, parse_hosts
from qtap_async.events.dns import DnsAnswer, DnsMessage


@dataclass
class Conn:
    pid: int = 10
    direction: str = "egress"
    laddr: str = "10.0.0.2"
    raddr: str = "10.0.0.9"
    domain: str = ""
    domain_source: str = ""


def _answer(name: str, ip: str) -> DnsMessage:
    return DnsMessage(id=1, is_response=True, qname=name + ".", answers=[DnsAnswer(name=name, type="A", ttl=300,
                                                                                   data=ip)])


def test_a_stronger_source_replaces_a_weaker_one_never_the_reverse() -> None:
    c: Any = Conn()
    assert offer(c, "other.example", "dns_host") and (c.domain, c.domain_source) == ("other.example", "dns_host")
    assert offer(c, "Api.Example.", "host") and (c.domain, c.domain_source) == ("api.example", "host")
    assert not offer(c, "late.example", "dns")
    assert not offer(c, "second.example", "host")  # the first Host of a connection names it
    assert offer(c, "sni.example", "sni") and c.domain_source == "sni"
    assert not offer(c, "x.example", "host")
    assert c.domain == "sni.example"


def test_ip_literals_are_not_names() -> None:
    c: Any = Conn()
    assert not offer(c, "127.0.0.1", "host") and not offer(c, "::1", "host") and c.domain == ""


def test_hosts_file_first_name_first_line_wins() -> None:
    text = "# comment\n127.0.0.1 localhost\n127.0.0.1 second\n10.1.2.3  Web.Internal web  # x\n::1 ip6-localhost\nbad\n"
    assert parse_hosts(text) == {"127.0.0.1": "localhost", "10.1.2.3": "web.internal", "::1": "ip6-localhost"}


def test_at_open_same_process_dns_then_other_process_then_hosts(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.9 from-hosts.test\n")
    dns = DnsCache()
    d = Domains(dns, HostsFiles(proc=str(tmp_path / "noproc"), host_file=str(hosts)))
    c: Any = Conn()
    d.at_open(c)
    assert (c.domain, c.domain_source) == ("from-hosts.test", "hosts")
    dns.learn(99, _answer("other.test", "10.0.0.9"))
    c = Conn()
    d.at_open(c)
    assert (c.domain, c.domain_source) == ("other.test", "dns_host")
    dns.learn(10, _answer("mine.test", "10.0.0.9"))
    c = Conn()
    d.at_open(c)
    assert (c.domain, c.domain_source) == ("mine.test", "dns")
    # An accepted connection is named by its local (server) address, as its client names it.
    c = Conn(pid=11, direction="ingress", laddr="10.0.0.9", raddr="10.0.0.2")
    d.at_open(c)
    assert (c.domain, c.domain_source) == ("mine.test", "dns_host")  # the latest answer host-wide


def test_hosts_file_is_reloaded_when_it_changes_and_per_root(tmp_path: Path) -> None:
    host_file = tmp_path / "etc" / "hosts"
    host_file.parent.mkdir()
    host_file.write_text("10.0.0.1 one.test\n")
    # A "container" process 42 with a root of its own.
    croot = tmp_path / "proc" / "42" / "root" / str(host_file).lstrip("/")
    croot.parent.mkdir(parents=True)
    croot.write_text("10.0.0.1 inside.test\n")
    h = HostsFiles(proc=str(tmp_path / "proc"), host_file=str(host_file), check_interval_s=1.0)
    assert h.lookup(7, "10.0.0.1", now=0.0) == "one.test"  # pid 7 has no readable root: the host's file
    assert h.lookup(42, "10.0.0.1", now=0.0) == "inside.test"
    host_file.write_text("10.0.0.1 two.test\n10.0.0.2 new.test\n")
    os.utime(host_file, ns=(1, 10**18))  # a different mtime even on a coarse clock
    assert h.lookup(7, "10.0.0.1", now=0.5) == "one.test"  # not looked at again within the interval
    assert h.lookup(7, "10.0.0.1", now=1.5) == "two.test"
    assert h.lookup(7, "10.0.0.2", now=1.6) == "new.test"
    assert h.lookup(42, "10.0.0.2", now=1.6) == ""


def test_an_exited_process_leaves_no_hosts_path_behind(tmp_path: Path) -> None:
    # The soak's churn through the real stages: each short-lived process is looked up once (its
    # connection's open) in its own /proc/PID/root; its exit record, through conntrack and enrichment,
    # forgets that path, so a host running a program per request keeps only the live processes' paths.
    import subprocess

    from qtap_async.events.kernel import ProcExit
    from qtap_async.transforms.conntrack import Conntrack
    from qtap_async.transforms.enrich import Enrich

    host_file = tmp_path / "hosts"
    host_file.write_text("10.0.0.9 from-hosts.test\n")
    ct = Conntrack()
    en = Enrich(ct, hosts=HostsFiles(host_file=str(host_file)))
    hosts = en.domains.hosts
    live = subprocess.Popen(["sleep", "30"])
    try:
        hosts.lookup(live.pid, "10.0.0.9")
        for _ in range(20):
            p = subprocess.Popen(["sleep", "30"])
            # Through its own root (/proc/PID/root + host_file): the same file, as the process sees it.
            assert hosts.lookup(p.pid, "10.0.0.9") == "from-hosts.test"
            p.kill()
            p.wait()
            en.apply(ct.handle(ProcExit(1, p.pid, 0)))
        # The live process's path only; none of the 20 exited ones.
        assert hosts.watched == 1 and hosts.forgotten == 20 and hosts.evicted_full == 0
        assert hosts.lookup(live.pid, "10.0.0.9") == "from-hosts.test"
    finally:
        live.kill()
        live.wait()
