"""The HotSpot dynamic attach protocol, spoken from Python (no JDK needed on the agent's side).

How a HotSpot JVM (OpenJDK 8 to 25) lets a tool in: the tool creates ``.attach_pid<pid>`` in the JVM's
working directory (or /tmp), sends SIGQUIT, and the JVM's signal thread, finding the file, starts its attach
listener on the UNIX socket ``/tmp/.java_pid<pid>``. A request on that socket is the protocol version "1", the
command and three arguments, each NUL-terminated; the answer is a status line and the command's output.
``load instrument false <jar>=<args>`` loads a java.lang.instrument agent and calls its ``agentmain``.

Everything is reached through ``/proc/PID/root`` and ``/proc/PID/cwd``, and the pid the JVM knows is its
own namespace's (NSpid), so a JVM in a container is attached the same way. The JVM accepts a peer with its
own uid or root; qtap runs as root. A JVM that does not catch SIGQUIT (``-Xrs``, or one still starting) would
be killed by the signal, so it is refused instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from qtap_async.errors import JavaAttachError

PROTOCOL_VERSION = b"1"
_SIGQUIT_BIT = 1 << (signal.SIGQUIT - 1)


@dataclass(frozen=True)
class JvmProcess:
    """A running process that has HotSpot's libjvm mapped."""

    pid: int  # in qtap's pid namespace
    ns_pid: int  # the pid the JVM knows itself by (its attach file and socket are named with it)
    uid: int
    exe: str
    root: Path  # /proc/PID/root: the JVM's file system as it sees it

    def path(self, inside: str) -> Path:
        """A path of the JVM's file system, from qtap's side."""
        return self.root / inside.lstrip("/")

    @property
    def socket_path(self) -> Path:
        return self.path(f"/tmp/.java_pid{self.ns_pid}")


def _status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def probe(pid: int) -> JvmProcess | None:
    """The JVM running as `pid`, or None when it is not a HotSpot JVM (or is gone)."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            if b"/libjvm.so" not in f.read():
                return None
        st = _status(pid)
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    ns_pid = int(st.get("NSpid", str(pid)).split()[-1])
    uid = int(st.get("Uid", "0").split()[1])  # effective uid
    return JvmProcess(pid, ns_pid, uid, exe, Path(f"/proc/{pid}/root"))


def find_jvms() -> list[JvmProcess]:
    """Every HotSpot JVM on the host (qtap's own pid namespace and the ones below it)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            jvm = probe(int(entry.name))
            if jvm is not None:
                out.append(jvm)
    return sorted(out, key=lambda j: j.pid)


def catches_sigquit(pid: int) -> bool:
    return bool(int(_status(pid).get("SigCgt", "0"), 16) & _SIGQUIT_BIT)


def start_listener(jvm: JvmProcess, timeout_s: float = 5.0) -> None:
    """Make the JVM open its attach socket (no-op when it is already open)."""
    if jvm.socket_path.exists():
        return
    if not catches_sigquit(jvm.pid):
        raise JavaAttachError(f"JVM {jvm.pid} does not catch SIGQUIT (-Xrs, or still starting): not attaching, "
                              "the signal would end it")
    trigger = Path(f"/proc/{jvm.pid}/cwd") / f".attach_pid{jvm.ns_pid}"
    try:
        trigger.touch()
    except OSError:  # a read-only working directory: the JVM also looks in its /tmp
        trigger = jvm.path(f"/tmp/.attach_pid{jvm.ns_pid}")
        trigger.touch()
    try:
        os.kill(jvm.pid, signal.SIGQUIT)
        deadline = time.monotonic() + timeout_s
        delay = 0.002
        while not jvm.socket_path.exists():
            if time.monotonic() > deadline:
                raise JavaAttachError(f"JVM {jvm.pid} did not open its attach socket within {timeout_s:g} s "
                                      "(-XX:+DisableAttachMechanism?)")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    finally:
        with contextlib.suppress(OSError):
            trigger.unlink()


def encode_request(command: str, *args: str) -> bytes:
    """The bytes of one attach request: version, command and exactly three arguments, each NUL-terminated."""
    if len(args) > 3:
        raise JavaAttachError(f"attach command {command!r} takes at most 3 arguments, got {len(args)}")
    parts = [PROTOCOL_VERSION, command.encode(), *(a.encode() for a in args)]
    parts += [b""] * (5 - len(parts))
    return b"".join(p + b"\0" for p in parts)


def parse_reply(raw: bytes) -> tuple[int, str]:
    """(status, output) of an attach reply: the first line is the command's status, the rest its output."""
    head, _, rest = raw.partition(b"\n")
    try:
        status = int(head.strip())
    except ValueError:
        raise JavaAttachError(f"unexpected attach reply {raw[:200]!r}") from None
    return status, rest.decode("utf-8", "replace")


def execute(jvm: JvmProcess, command: str, *args: str, timeout_s: float = 10.0) -> tuple[int, str]:
    """Run one attach command; starts the JVM's attach listener first when needed."""
    start_listener(jvm, timeout_s=min(timeout_s, 5.0))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(str(jvm.socket_path))
            s.sendall(encode_request(command, *args))
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError as exc:
            raise JavaAttachError(f"attach to JVM {jvm.pid}: {exc}") from exc
    return parse_reply(b"".join(chunks))


def load_agent(jvm: JvmProcess, jar: str, options: str, timeout_s: float = 10.0) -> None:
    """Load a java.lang.instrument agent (`jar` as the JVM sees it) and run its agentmain(options)."""
    status, output = execute(jvm, "load", "instrument", "false", f"{jar}={options}", timeout_s=timeout_s)
    # The status line says whether the command ran; the output's first line is Agent_OnAttach's return.
    result = output.strip().splitlines()[0].strip() if output.strip() else "0"
    if status != 0 or result not in ("0", "return code: 0"):
        raise JavaAttachError(f"JVM {jvm.pid} refused the agent (status {status}): {output.strip()[:500]}")
