"""Finds HotSpot JVMs and loads qtap's Java agent into each, through the dynamic attach mechanism.

The JVMs running at start-up are attached first, then the host is looked at again every `rescan_s` for new
ones (a JVM attached before its main class runs would only slow its start). The attach itself blocks for
the JVM's answer (tens to hundreds of ms), so it runs in a worker thread, one JVM at a time. A JVM that
refuses is retried a few times, then left alone with the reason kept for `qtap inspect` and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from qtap_async.errors import JavaAttachError
from qtap_async.tls import java_attach
from qtap_async.tls.java_build import JAR
from qtap_async.tls.java_channel import JavaChannel

log = logging.getLogger("qtap.java")

MAX_TRIES = 3


@dataclass
class JvmState:
    pid: int
    exe: str
    state: str = "found"  # found | attached | failed | gone
    reason: str = ""
    tries: int = 0
    attach_ms: float = 0.0


def agent_jar() -> Path:
    if not JAR.exists():
        raise JavaAttachError(f"{JAR} is missing: build it with python -m qtap_async.tls.java_build")
    return JAR


def place_jar(jvm: java_attach.JvmProcess, jar: Path) -> str:
    """The agent jar's path as the JVM sees it: a copy in the JVM's /tmp, named for its contents, readable by
    the JVM's user whatever qtap's checkout permissions are (and reachable from a container's file system)."""
    digest = hashlib.sha256(jar.read_bytes()).hexdigest()[:16]
    inside = f"/tmp/.qtap-agent-{digest}.jar"
    target = jvm.path(inside)
    if not target.exists():
        tmp = target.with_name(f"{target.name}.{os.getpid()}")
        shutil.copyfile(jar, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    return inside


class JavaAttacher:
    def __init__(self, channel: JavaChannel, only_pids: frozenset[int] | None = None, rescan_s: float = 5.0) -> None:
        self.channel = channel
        self.only_pids = only_pids
        self.rescan_s = rescan_s
        self.jvms: dict[int, JvmState] = {}
        self.attached_total = 0
        self.failed_total = 0
        self._task: asyncio.Task[None] | None = None

    def attach_one(self, jvm: java_attach.JvmProcess) -> JvmState:
        """Attach (blocking): the socket listens in the JVM's /tmp, the jar is there, agentmain connects."""
        st = self.jvms.setdefault(jvm.pid, JvmState(jvm.pid, jvm.exe))
        st.tries += 1
        started = time.monotonic()
        try:
            path = self.channel.listen_in(jvm.root)
            java_attach.load_agent(jvm, place_jar(jvm, agent_jar()), f"socket={path}")
        except (JavaAttachError, OSError) as exc:
            st.reason = str(exc)
            if st.tries >= MAX_TRIES or not Path(f"/proc/{jvm.pid}").exists():
                st.state = "failed"
                self.failed_total += 1
                log.warning("java: not attached to JVM %d (%s): %s", jvm.pid, jvm.exe, exc)
            return st
        st.attach_ms = (time.monotonic() - started) * 1000
        st.state = "attached"
        st.reason = ""
        self.attached_total += 1
        log.info("java: agent loaded into JVM %d (%s) in %.0f ms", jvm.pid, jvm.exe, st.attach_ms)
        return st

    def scan_once(self) -> list[JvmState]:
        """Attach every JVM not attached yet (blocking); returns the states that changed."""
        changed = []
        seen = set()
        for jvm in java_attach.find_jvms():
            if self.only_pids is not None and jvm.pid not in self.only_pids:
                continue
            seen.add(jvm.pid)
            st = self.jvms.get(jvm.pid)
            if st is not None and st.state in ("attached", "failed"):
                continue
            changed.append(self.attach_one(jvm))
        for pid, st in self.jvms.items():
            if pid not in seen and st.state != "gone":
                st.state = "gone"
                changed.append(st)
        return changed

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.scan_once)
            await asyncio.sleep(self.rescan_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="java-attach")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def metrics(self) -> dict[str, int]:
        states = [s.state for s in self.jvms.values()]
        return {"attached": states.count("attached"), "failed": self.failed_total}
