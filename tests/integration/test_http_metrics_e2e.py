"""The http_metrics plugin in a real `qtap run --config`: real curl requests to a real local HTTP server move the
duration histograms on the agent's /metrics by exactly the number of requests sent, with the right method,
status class, route template, direction and process labels on both sides (curl's egress is the client side,
the server's ingress the server side), and a flood of 300 distinct paths against a low max_series folds into
`other`, counted by the fold counter."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from qtap_async.telemetry import metrics
from tests.integration.test_status_e2e import Agent
from tests.plugins.test_run_config import CURL

pytestmark = pytest.mark.bpf

MAX_SERIES = 8
CONFIG = f"""
version: 2
services:
  event_stores:
    - {{type: disabled}}
stacks:
  red:
    plugins:
      - type: http_metrics
        config:
          labels: [method, status_class, route, direction, process]
          max_series: {MAX_SERIES}
          routes: ["/items/{{id}}"]
tap:
  direction: all
  ignore_loopback: false
  http: {{stack: red}}
"""

CLIENT = metrics.HTTP_HISTOGRAMS[("client", "request_duration_seconds")].name
SERVER = metrics.HTTP_HISTOGRAMS[("server", "request_duration_seconds")].name


def curl(*urls: str) -> None:
    """One curl process for all the URLs (one keep-alive connection; curl's URL globbing expands {a,b})."""
    subprocess.run([CURL, "-sS", *urls], check=True, timeout=60,
                   stdout=subprocess.DEVNULL)


def series(m: dict[str, float], name: str, **labels: str) -> dict[str, float]:
    """The samples of ``name`` (a _bucket/_count/_sum) whose labels include ``labels``, by their full key."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return {k: v for k, v in m.items() if k.startswith(name + "{") and all(w in k for w in want)}


def total(m: dict[str, float], name: str, **labels: str) -> float:
    return sum(series(m, name, **labels).values())


def wait_for(agent: Agent, done: object, timeout: float = 30) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    m = agent.metrics()
    while time.monotonic() < deadline and not done(m):  # type: ignore[operator]
        time.sleep(0.3)
        m = agent.metrics()
    return m


def test_histograms_move_with_curl_traffic_and_a_path_flood_folds(tmp_path: Path, http_server: int) -> None:
    server = http_server
    config = tmp_path / "qtap.yaml"
    config.write_text(CONFIG)
    agent = Agent(tmp_path, "--config", str(config), "--port", str(server))
    try:
        assert agent.wait_ready(True).status_code == 200
        base = f"http://127.0.0.1:{server}"
        ok = {"method": "GET", "status_class": "2xx", "route": "/items/{id}"}
        missing = {"method": "GET", "status_class": "4xx", "route": "/items/{id}"}
        before = agent.metrics()
        assert total(before, CLIENT + "_count") == 0  # nothing before the first request
        for i in range(5):
            curl(f"{base}/items/{i + 1}?n=200")
        curl(f"{base}/items/77?status=404&n=10")
        curl(f"{base}/items/78?status=404&n=10")

        def counted(m: dict[str, float]) -> bool:
            return (total(m, CLIENT + "_count", **ok) >= 5 and total(m, CLIENT + "_count", **missing) >= 2
                    and total(m, SERVER + "_count", **ok) >= 5 and total(m, SERVER + "_count", **missing) >= 2)

        m = wait_for(agent, counted)
        assert counted(m), (sorted(k for k in m if k.startswith("http_")), agent.err.read_text()[-2000:])
        # Exactly the requests sent, on each side, with the process and direction of each end.
        client_ok = series(m, CLIENT + "_count", **ok)
        assert list(client_ok.values()) == [5.0], client_ok
        (key,) = client_ok
        assert 'direction="egress"' in key and 'process="curl"' in key and 'stack="red"' in key, key
        assert total(m, CLIENT + "_count", **missing) == 2
        server_ok = series(m, SERVER + "_count", **ok)
        assert list(server_ok.values()) == [5.0] and 'direction="ingress"' in next(iter(server_ok)), server_ok
        assert total(m, SERVER + "_count", **missing) == 2
        # The buckets: cumulative, ending at the count (+Inf), and every local request under 10 s.
        buckets = {k.split('le="')[1].split('"')[0]: v for k, v in series(m, CLIENT + "_bucket", **ok).items()}
        bounds = sorted((float(b) for b in buckets), key=float)
        values = [buckets[b] for b in sorted(buckets, key=float)]
        assert values == sorted(values) and buckets["+Inf"] == 5 and buckets["10.0"] == 5, buckets
        assert bounds[0] == 0.005 and total(m, CLIENT + "_sum", **ok) > 0
        assert total(m, metrics.HTTP_HISTOGRAMS[("client", "response_body_size_bytes")].name + "_count", **ok) == 5
        assert buckets_of(m, metrics.HTTP_HISTOGRAMS[("client", "response_body_size_bytes")].name, ok)["1000.0"] == 5
        assert m[f'{metrics.HTTP_METRICS_FOLDED.name}{{stack="red"}}'] == 0

        # 300 distinct paths (words, so the route heuristic keeps each one): past max_series they fold.
        letters = ",".join("abcdefghijklmnopqrst")
        curl(f"{base}/flood/p{{{letters}}}{{{letters[:29]}}}?n=10")  # 20 x 15 = 300 URLs

        def flooded(m: dict[str, float]) -> bool:
            return total(m, CLIENT + "_count", method="GET", status_class="2xx") >= 305

        m = wait_for(agent, flooded, timeout=60)
        client = series(m, CLIENT + "_count", method="GET", status_class="2xx")
        assert sum(client.values()) == 305, client  # the 5 /items and the 300 flood requests, nothing lost
        other = {k: v for k, v in client.items() if 'route="other"' in k}
        assert len(other) == 1 and next(iter(other.values())) > 250, client
        folded = m[f'{metrics.HTTP_METRICS_FOLDED.name}{{stack="red"}}']
        assert folded > 0, folded
        kept = m[f'{metrics.HTTP_METRICS_SERIES.name}{{stack="red"}}']
        assert kept <= 2 * MAX_SERIES and len([k for k in m if k.startswith(SERVER + "_count")]) <= 2 * MAX_SERIES
        assert m[f'{metrics.HTTP_METRICS_OBSERVATIONS.name}{{stack="red"}}'] == 2 * 307
    finally:
        assert agent.stop() == 0


def buckets_of(m: dict[str, float], name: str, labels: dict[str, str]) -> dict[str, float]:
    return {k.split('le="')[1].split('"')[0]: v for k, v in series(m, name + "_bucket", **labels).items()}
