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

from qtap_async.control.settings import ControlSettings, load_settings

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
    # The agent's stop (drain, flush, detach every probe) gets as long as systemd gives it (TimeoutStopSec=60s).
    assert pod["terminationGracePeriodSeconds"] == 60
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


def test_cpu_priority_reaches_the_agent(tools: None) -> None:
    def agent_args(*sets: str) -> list[str]:
        out = chart("helm", "template", "qtap-async", str(CHART), *sets).stdout
        ds = next(d for d in docs(out) if d["kind"] == "DaemonSet")
        args: list[str] = ds["spec"]["template"]["spec"]["containers"][0]["args"]
        return args

    default = agent_args()
    assert default[default.index("--cpu-priority") + 1] == "normal"
    low = agent_args("--set", "agent.cpuPriority=low")
    assert low[low.index("--cpu-priority") + 1] == "low"


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
    ("agent.cpuPriority=lowest", "cpuPriority"),
    ("image.pullPolicy=Sometimes", "pullPolicy"),
    # The database URL carries a password: it goes to a Secret, never into the settings ConfigMap.
    ("control.settings.database_url=postgresql://u:p@db/c", "/control/settings/database_url"),
    ("control.database.url=mysql://u:p@db/c", "/control/database/url"),
    ("control.oidc.groupRoles[0].role=root", "/control/oidc/groupRoles/0/role"),
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


# ---- the control plane ---------------------------------------------------------------------------------


def render_valid(tmp_path: Path, *values: str) -> dict[tuple[str, str], dict[str, Any]]:
    """`helm template` with these values, decoded strictly into the Kubernetes API types by the same validator
    `scripts/chart check` runs, then indexed by (kind, name)."""
    r = chart("helm", "template", "x", str(CHART), *values)
    path = tmp_path / "rendered.yaml"
    path.write_text(r.stdout)
    v = chart("validate", str(path), check=False)
    assert v.returncode == 0, v.stderr
    assert "match the Kubernetes API types" in v.stdout
    return {(d["kind"], d["metadata"]["name"]): d for d in docs(r.stdout)}


def control_settings(objs: dict[tuple[str, str], dict[str, Any]], tmp_path: Path) -> tuple[ControlSettings, str]:
    """The settings file of the control plane's ConfigMap, read by the loader `qtap control serve --config` uses
    (strict: an unknown or mistyped setting fails)."""
    text = objs[("ConfigMap", "x-qtap-async-control")]["data"]["control.yaml"]
    path = tmp_path / "control.yaml"
    path.write_text(text)
    return load_settings(path), text


def test_control_plane_is_off_by_default(tools: None) -> None:
    objs = docs(RENDERED.read_text())
    assert not [d for d in objs if d["metadata"]["name"].endswith("-control")]


def test_control_plane_on_sqlite(tools: None, tmp_path: Path) -> None:
    objs = render_valid(tmp_path, "--set", "control.enabled=true")
    dep = objs[("Deployment", "x-qtap-async-control")]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}  # one pod at a time on the SQLite volume
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65534
    assert pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    assert c["image"] == "localhost/qtap-async:0.1.0"
    assert c["args"] == ["control", "serve", "--config", "/etc/qtap-control/control.yaml", "--log-level", "info"]
    assert c["ports"] == [{"name": "http", "containerPort": 8429, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert "env" not in c  # SQLite, no SSO secret: nothing from a Secret
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "x-qtap-async-control"
    assert volumes["settings"]["configMap"]["name"] == "x-qtap-async-control"
    assert "emptyDir" in volumes["tmp"] and mounts["tmp"] == "/tmp"
    assert objs[("PersistentVolumeClaim", "x-qtap-async-control")]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    settings, _ = control_settings(objs, tmp_path)
    # The settings file names the paths and port the pod spec mounts and exposes.
    assert settings.data_dir == mounts["data"] and mounts["settings"] == "/etc/qtap-control"
    assert settings.listen == "0.0.0.0:8429" and settings.cookie_secure is True
    assert settings.database_url == "" and not settings.oidc.enabled
    svc = objs[("Service", "x-qtap-async-control")]["spec"]
    assert svc["ports"] == [{"name": "http", "port": 8429, "targetPort": "http", "protocol": "TCP"}]
    assert svc["selector"] == dep["spec"]["template"]["metadata"]["labels"] == dep["spec"]["selector"]["matchLabels"]
    assert not [k for k in objs if k[0] == "Secret" and "control" in k[1]]


def test_control_plane_on_postgresql_with_sso(tools: None, tmp_path: Path) -> None:
    objs = render_valid(tmp_path, "-f", str(ROOT / "deploy/helm/ci-values/full.yaml"))
    dep = objs[("Deployment", "x-qtap-async-control")]
    assert dep["spec"]["replicas"] == 2 and "strategy" not in dep["spec"]  # several instances on one database
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["QTAP_CONTROL_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "x-qtap-async-control-database", "key": "url"}
    assert env["QTAP_CONTROL_OIDC_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "x-qtap-async-control-oidc", "key": "client-secret"}
    assert env["QTAP_LOG_FORMAT"] == {"name": "QTAP_LOG_FORMAT", "value": "plain"}
    assert objs[("Secret", "x-qtap-async-control-database")]["stringData"] == {
        "url": "postgresql://qtap:db-secret@postgres.db:5432/qtap_control"}
    assert objs[("Secret", "x-qtap-async-control-oidc")]["stringData"] == {"client-secret": "oidc-secret"}
    # The state is in PostgreSQL: no volume claim, the data directory is scratch.
    assert ("PersistentVolumeClaim", "x-qtap-async-control") not in objs
    assert {v["name"]: v for v in pod["volumes"]}["data"] == {"name": "data", "emptyDir": {}}
    settings, text = control_settings(objs, tmp_path)
    assert "db-secret" not in text and "oidc-secret" not in text  # the secrets stay in the Secrets
    assert settings.oidc.enabled and settings.oidc.issuer == "https://idp.example/realms/ops"
    assert settings.oidc.client_secret_env in env  # the variable the pod sets is the one the server reads
    assert [(g.group, g.team, g.role) for g in settings.oidc.group_roles] == [("sre", "ops", "admin")]
    assert settings.pulse_url == "https://pulse.example"
    assert settings.session_ttl_s == 3600 and settings.limits.max_list_limit == 500  # control.settings merged


def test_control_plane_secrets_by_name(tools: None, tmp_path: Path) -> None:
    objs = render_valid(tmp_path, "--set", "control.enabled=true", "--set", "control.database.existingSecret=pg",
                        "--set", "control.oidc.issuer=https://idp.example", "--set",
                        "control.oidc.existingSecret=sso")
    (c,) = objs[("Deployment", "x-qtap-async-control")]["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
    assert refs == {"QTAP_CONTROL_DATABASE_URL": {"name": "pg", "key": "url"},
                    "QTAP_CONTROL_OIDC_CLIENT_SECRET": {"name": "sso", "key": "client-secret"}}
    assert not [k for k in objs if k[0] == "Secret" and "control" in k[1]]  # the chart makes none of its own


def test_control_plane_settings_change_rolls_the_pods(tools: None, tmp_path: Path) -> None:
    def checksum(*values: str) -> str:
        objs = render_valid(tmp_path, "--set", "control.enabled=true", *values)
        dep = objs[("Deployment", "x-qtap-async-control")]
        return str(dep["spec"]["template"]["metadata"]["annotations"]["checksum/settings"])

    assert checksum() != checksum("--set", "control.settings.session_ttl_s=60")


def test_control_plane_sqlite_refuses_several_replicas(tools: None) -> None:
    r = chart("helm", "template", "x", str(CHART), "--set", "control.enabled=true", "--set", "control.replicas=2",
              check=False)
    assert r.returncode != 0
    assert "control.replicas > 1 needs control.database" in r.stderr


def test_agents_join_the_charts_control_plane(tools: None, tmp_path: Path) -> None:
    objs = render_valid(tmp_path, "-f", str(ROOT / "deploy/helm/ci-values/full.yaml"))
    pod = objs[("DaemonSet", "x-qtap-async-agent")]["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    args = agent["args"]
    # The config comes from the control plane's Service, not from the ConfigMap.
    assert args[args.index("--control") + 1] == "http://x-qtap-async-control:8429"
    svc = objs[("Service", "x-qtap-async-control")]["spec"]
    assert svc["ports"][0]["port"] == 8429
    assert "--config" not in args
    assert args[args.index("--control-state") + 1] == "/var/lib/qtap/control"
    env = {e["name"]: e for e in agent["env"]}
    assert env["QTAP_REGISTRATION_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "x-qtap-async-registration", "key": "registration-token"}
    assert objs[("Secret", "x-qtap-async-registration")]["stringData"] == {
        "registration-token": "qcr_example_registration"}
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["control-state"] == "/var/lib/qtap/control"
    assert volumes["control-state"]["hostPath"] == {"path": "/var/lib/qtap-async/control", "type": "DirectoryOrCreate"}
    # The flags are ones `qtap run` knows (typer refuses unknown options before anything starts).
    help_text = subprocess.run([sys.executable, "-m", "cli.main", "run", "--help"], capture_output=True, text=True,
                               cwd=ROOT, timeout=120, env={**os.environ, "COLUMNS": "200"}).stdout
    assert "--control " in help_text and "--control-state" in help_text and "QTAP_REGISTRATION_TOKEN" in help_text


def test_agents_join_an_external_control_plane(tools: None, tmp_path: Path) -> None:
    objs = render_valid(tmp_path, "--set", "agent.control.enabled=true", "--set",
                        "agent.control.url=https://control.example", "--set", "agent.control.existingSecret=reg")
    (agent,) = objs[("DaemonSet", "x-qtap-async-agent")]["spec"]["template"]["spec"]["containers"]
    assert agent["args"][agent["args"].index("--control") + 1] == "https://control.example"
    env = {e["name"]: e for e in agent["env"]}
    assert env["QTAP_REGISTRATION_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "reg", "key": "registration-token"}
    assert not [k for k in objs if k[0] == "Secret" and "registration" in k[1]]
    r = chart("helm", "template", "x", str(CHART), "--set", "agent.control.enabled=true", check=False)
    assert r.returncode != 0 and "agent.control.enabled needs agent.control.url or control.enabled" in r.stderr
