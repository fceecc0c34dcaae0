"""`qtap inspect`'s view of the JVMs on the host: which have qtap's Java agent, and why the others do not.

Nothing here starts a JVM's attach listener (no SIGQUIT): a JVM whose listener is not open yet is reported
as never attached; one whose listener is open is asked for its system properties, where the Java agent
leaves its state (``qtap.agent``).
"""

from __future__ import annotations

from pathlib import Path

from qtap_async.errors import JavaAttachError
from qtap_async.tls import java_attach


def _agent_property(props: str) -> str:
    for line in props.splitlines():
        if line.startswith("qtap.agent="):
            # java.util.Properties.store escapes ':' '=' and friends with a backslash
            return line[len("qtap.agent="):].replace("\\:", ":").replace("\\=", "=").replace("\\\\", "\\")
    return ""


def _socket_alive(path: str, root: Path) -> bool:
    return (root / path.lstrip("/")).exists()


def describe(jvm: java_attach.JvmProcess) -> dict[str, object]:
    out: dict[str, object] = {"pid": jvm.pid, "exe": jvm.exe}
    try:
        cmdline = Path(f"/proc/{jvm.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return out | {"state": "gone"}
    if b"-XX:+DisableAttachMechanism" in cmdline:
        return out | {"state": "cannot attach", "reason": "-XX:+DisableAttachMechanism"}
    if not jvm.socket_path.exists():
        if not java_attach.catches_sigquit(jvm.pid):
            return out | {"state": "cannot attach", "reason": "does not catch SIGQUIT (-Xrs or still starting)"}
        return out | {"state": "not attached", "reason": "attach listener not started (qtap never attached)"}
    try:
        _, props = java_attach.execute(jvm, "properties", timeout_s=3.0)
    except JavaAttachError as exc:
        return out | {"state": "unknown", "reason": str(exc)}
    for line in props.splitlines():
        if line.startswith("java.vm.version="):
            out["version"] = line.split("=", 1)[1]
    agent = _agent_property(props)
    if not agent:
        return out | {"state": "not attached", "reason": "qtap's Java agent not loaded"}
    if agent.startswith("capturing to "):
        path = agent[len("capturing to "):]
        if _socket_alive(path, jvm.root):
            return out | {"state": "capturing", "channel": path}
        return out | {"state": "agent idle", "reason": f"the qtap that attached it is gone ({path})"}
    return out | {"state": "agent " + agent.split(":", 1)[0], "reason": agent}


def describe_all() -> list[dict[str, object]]:
    return [describe(j) for j in java_attach.find_jvms()]


def render(jvms: list[dict[str, object]]) -> list[str]:
    lines = ["JVMs (JSSE plaintext through qtap's Java agent, tap.tls.java):"]
    for j in jvms:
        extra = f" {j['version']}" if "version" in j else ""
        why = f": {j['reason']}" if "reason" in j else ""
        via = f" via {j['channel']}" if "channel" in j else ""
        lines.append(f"  pid {j['pid']} {j['exe']}{extra}: {j['state']}{via}{why}")
    return lines
