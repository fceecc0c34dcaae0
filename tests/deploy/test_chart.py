"""The Helm chart: `helm lint --strict`, deploy/k8s/ in sync with it, every rendering decoded strictly into the
Kubernetes API types (a validator that really rejects unknown fields and wrong types), the DaemonSet's probes
and privileges, values.schema.json refusing bad values, and the rendered agent config accepted by `qtap validate`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "qtap-async"
RENDERED = ROOT / "deploy" / "k8s" / "qtap-async.yaml"


def chart(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["bash", str(ROOT / "scripts" / "chart"), *args], capture_output=True, text=True,
                       timeout=1800, cwd=ROOT)
    if check and r.returncode != 0:
        pytest.fail(f"scripts/chart {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def tools() -> None:
    chart("tools")


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_lint_sync_and_strict_validation(tools: None) -> None:
    r = chart("check")
    assert "in sync" in r.stderr and "match the Kubernetes API types" in r.stdout


def test_rendered_daemonset(tools: None) -> None:
    objs = {(d["kind"], d["metadata"]["name"]): d for d in docs(RENDERED.read_text())}
    ds = objs[("DaemonSet", "qtap-async-agent")]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod["tolerations"] == [{"operator": "Exists"}]
    (agent,) = pod["containers"]
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["securityContext"]["privileged"] is True
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in agent["env"]
    assert {"mountPath": "/sys", "name": "sys", "readOnly": True, "mountPropagation": "HostToContainer"} in \
        agent["volumeMounts"]
    assert "--status-listen" in agent["args"] and "0.0.0.0:10001" in agent["args"]
    assert agent["resources"]["limits"]["memory"] == "1Gi"
    assert ("Deployment", "qtap-async-pulse") in objs and ("Service", "qtap-async-pulse") in objs


def test_capabilities_instead_of_privileged(tools: None) -> None:
    r = chart("helm", "template", "x", str(CHART), "--set", "agent.privileged=false")
    ds = next(d for d in docs(r.stdout) if d["kind"] == "DaemonSet")
    sc = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE",
                                                           "DAC_READ_SEARCH", "SYS_RESOURCE"]}


def test_secrets_reach_the_agent_through_env(tools: None, tmp_path: Path) -> None:
    r = chart("helm", "template", "x", str(CHART), "-f", str(ROOT / "deploy/helm/ci-values/full.yaml"))
    objs = docs(r.stdout)
    ds = next(d for d in objs if d["kind"] == "DaemonSet")
    env = {e["name"]: e for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["QTAP_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "x-qtap-async-s3", "key": "secret-key"}
    assert env["QTAP_PULSE_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    config = next(d for d in objs if d["kind"] == "ConfigMap")["data"]["qtap.yaml"]
    assert "minio-secret" not in config  # credentials stay in the Secret
    # The config the chart writes is one the agent accepts.
    path = tmp_path / "qtap.yaml"
    path.write_text(config)
    v = subprocess.run([sys.executable, "-m", "cli.main", "validate", str(path)], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "QTAP_S3_ACCESS_KEY": "a", "QTAP_S3_SECRET_KEY": "b",
                                      "QTAP_PULSE_TOKEN": "t"}, timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr
    default_config = next(d for d in docs(RENDERED.read_text()) if d["kind"] == "ConfigMap")["data"]["qtap.yaml"]
    path.write_text(default_config)
    v = subprocess.run([sys.executable, "-m", "cli.main", "validate", str(path)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr


@pytest.mark.parametrize(("setting", "why"), [
    ("agent.statusPort=99999", "statusPort"),
    ("agent.privilegd=true", "privilegd"),
    ("image.pullPolicy=Sometimes", "pullPolicy"),
])
def test_schema_refuses_bad_values(tools: None, setting: str, why: str) -> None:
    r = chart("helm", "lint", "--strict", str(CHART), "--set", setting, check=False)
    assert r.returncode != 0
    assert why in r.stdout + r.stderr


BAD = {
    "unknown field": ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80}]\n"
                      "  bogusField: 1\n", "unknown field"),
    "wrong type": ("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: d}\nspec:\n  selector: {}\n"
                   "  template:\n    spec:\n      hostPID: \"yes\"\n      containers: [{name: a, image: i}]\n",
                   "hostPID"),
    "unknown kind": ("apiVersion: v1\nkind: Gadget\nmetadata: {name: g}\n", "not known"),
    "misplaced probe": ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\nreadinessProbe: {}\n", "unknown field"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_validator_rejects(tools: None, tmp_path: Path, case: str) -> None:
    text, why = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(RENDERED.read_text() + "\n---\n" + text)
    r = chart("validate", str(path), check=False)
    assert r.returncode == 1, r.stdout
    assert why in r.stderr, r.stderr
