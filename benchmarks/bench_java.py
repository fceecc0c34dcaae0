"""Java agent cost: attach time per JVM, and CPU added to the JVMs per HTTPS request.

    .venv/bin/python benchmarks/bench_java.py [--requests 2000]

A JavaPeer HTTPS server JVM (HttpsServer, SSLEngine) and a client JVM (java.net.http.HttpClient, or Apache
HttpClient 5 with --apache: SSLSocket) on this host. After a warm-up (JIT), the same run of sequential POSTs is
timed three times: without the agent, with qtap's Java agent capturing (a JavaChannel drained by a thread, as
qtap's source does, so the JVMs write into a live socket), and again after the agent is stopped. The cost is the
JVMs' CPU (utime + stime from /proc) per request, with the agent minus the mean of the two runs without.
The qtap side's own cost (parsing) is not counted here: it is the same as for any TLS library.

Prints one JSON line and a one-line summary; writes benchmarks/results/java.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qtap_async.tls import java_attach  # noqa: E402
from qtap_async.tls.java_build import JAR  # noqa: E402
from qtap_async.tls.java_channel import JavaChannel  # noqa: E402
from qtap_async.tls.java_manager import JavaAttacher  # noqa: E402

PEERS = ROOT / "tests" / "integration" / "peers" / "java"
CACHE = Path(os.environ.get("QTAP_TEST_CACHE", Path.home() / ".cache" / "qtap-tests")) / "java-peers" / "lib"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def main() -> int:
    import faulthandler

    faulthandler.dump_traceback_later(float(os.environ.get("BENCH_JAVA_DUMP_S", "0")) or 1e9)
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--apache", action="store_true", help="Apache HttpClient 5 (SSLSocket) as the client")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-java-"))
    cp = os.pathsep.join(str(p) for p in sorted(CACHE.glob("*.jar")))
    if not cp:
        sys.exit(f"no jars in {CACHE}: run tests/integration/test_java.py once (it fetches them with mvn)")
    subprocess.run(["javac", "-nowarn", "-cp", cp, "-d", str(tmp), *map(str, PEERS.glob("*.java"))], check=True,
                   capture_output=True)
    ks = tmp / "ks.p12"
    subprocess.run(["keytool", "-genkeypair", "-keystore", str(ks), "-storetype", "PKCS12", "-storepass", "qtapqtap",
                    "-alias", "q", "-keyalg", "EC", "-dname", "CN=localhost"], check=True, capture_output=True)
    classpath = f"{tmp}{os.pathsep}{cp}"
    server = subprocess.Popen(["java", "-cp", classpath, "JavaPeer", "server", str(ks), "qtapqtap"],
                              stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL)
    client = subprocess.Popen(["java", "-cp", classpath, "JavaPeer", "apache" if args.apache else "httpclient"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL)
    assert server.stdout and client.stdout and client.stdin
    port = int(server.stdout.readline().split()[1])
    assert client.stdout.readline().startswith("READY")

    def run(n: int) -> tuple[float, float]:
        before = cpu_s(server.pid) + cpu_s(client.pid)
        client.stdin.write(f"{port} /bench bench {n}\n")  # type: ignore[union-attr]
        client.stdin.flush()  # type: ignore[union-attr]
        line = client.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("DONE "), line
        return int(line.split()[1]) / 1e9, cpu_s(server.pid) + cpu_s(client.pid) - before

    channel = JavaChannel(name=f".qtap-java-bench-{os.getpid()}.sock")
    stop = threading.Event()
    frames = 0

    def drain() -> None:
        nonlocal frames
        while not stop.is_set():
            frames += len(channel.drain())
            time.sleep(0.005)

    try:
        run(args.requests)  # warm-up: JIT, connection pool
        run(args.requests)
        base1 = run(args.requests)
        attacher = JavaAttacher(channel, only_pids=frozenset({server.pid, client.pid}))
        states = attacher.scan_once()
        attach_ms = sorted(s.attach_ms for s in states)
        assert all(s.state == "attached" for s in states), states
        t = threading.Thread(target=drain, daemon=True)
        t.start()
        run(args.requests)  # the retransformed JSSE methods were deoptimized: let the JIT compile them again
        agent = run(args.requests)
        stop.set()
        t.join()
        frames += len(channel.drain())
        for pid in (server.pid, client.pid):
            jvm = java_attach.probe(pid)
            assert jvm is not None
            java_attach.load_agent(jvm, str(JAR), "stop")
        base2 = run(args.requests)
    finally:
        channel.close()
        for p in (server, client):
            p.kill()
            p.wait()
    n = args.requests
    base_cpu = (base1[1] + base2[1]) / 2
    result = {
        "client": "apache-httpclient5" if args.apache else "java.net.http",
        "requests": n,
        "attach_ms": [round(a, 1) for a in attach_ms],
        "cpu_us_per_request_without": round(base_cpu / n * 1e6, 1),
        "cpu_us_per_request_with_agent": round(agent[1] / n * 1e6, 1),
        "cpu_us_per_request_added": round((agent[1] - base_cpu) / n * 1e6, 1),
        "wall_us_per_request_without": round((base1[0] + base2[0]) / 2 / n * 1e6, 1),
        "wall_us_per_request_with_agent": round(agent[0] / n * 1e6, 1),
        "frames": frames,
    }
    out = ROOT / "benchmarks" / "results" / "java.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    print(f"java agent: attach {result['attach_ms']} ms; JVM CPU per request {result['cpu_us_per_request_without']} "
          f"-> {result['cpu_us_per_request_with_agent']} us (+{result['cpu_us_per_request_added']} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
