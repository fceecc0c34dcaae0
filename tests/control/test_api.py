"""The REST API against a real server: roles, team isolation, validation, tokens, sessions, audit."""

from __future__ import annotations

import httpx

from tests.control.conftest import Plane, config_yaml

YAML = {"Content-Type": "application/yaml"}


def post_config(c: httpx.Client, text: str, **params: str) -> httpx.Response:
    return c.post("/api/v1/configs", content=text.encode(), headers=YAML, params=params)


def test_viewer_reads_but_its_writes_get_403(plane: Plane) -> None:
    editor = plane.client(plane.user("ed", "editor"))
    viewer = plane.client(plane.user("vi", "viewer"))
    assert post_config(editor, config_yaml()).status_code == 201
    assert viewer.get("/api/v1/configs").json()[0]["version"] == 1
    r = post_config(viewer, config_yaml("full"))
    assert r.status_code == 403, r.text
    assert "editor" in r.json()["error"]
    assert viewer.post("/api/v1/configs/1/activate", json={}).status_code == 403
    assert viewer.post("/api/v1/users", json={"name": "x", "role": "admin"}).status_code == 403
    assert len(editor.get("/api/v1/configs").json()) == 1


def test_a_token_scope_caps_the_role(plane: Plane) -> None:
    plane.user("boss", "admin")
    read_only = plane.client(plane.token("boss", ["read"]))
    assert read_only.get("/api/v1/configs").status_code == 200
    assert post_config(read_only, config_yaml()).status_code == 403
    # and a read-only token cannot mint a wider one
    assert read_only.post("/api/v1/tokens", json={"name": "more", "scopes": ["admin"]}).status_code == 403


def test_teams_are_isolated(plane: Plane) -> None:
    a = plane.client(plane.user("alice", "admin", "alpha"))
    b = plane.client(plane.user("bob", "admin", "beta"))
    assert post_config(a, config_yaml(), activate="true").status_code == 201
    reg = a.post("/api/v1/registration-tokens", json={}).json()
    joined = httpx.post(f"{plane.url}/api/v1/agents/register",
                        json={"registration_token": reg["token"], "hostname": "alpha-host"})
    assert joined.status_code == 201 and joined.json()["team"] == "alpha"
    agent_id = joined.json()["agent_id"]
    assert [x["id"] for x in a.get("/api/v1/agents").json()] == [agent_id]
    assert b.get("/api/v1/agents").json() == []
    assert b.get("/api/v1/configs").json() == []
    assert b.get("/api/v1/configs/1").status_code == 404
    assert b.get(f"/api/v1/agents/{agent_id}").status_code == 404
    assert b.delete(f"/api/v1/agents/{agent_id}").status_code == 404
    assert b.get("/api/v1/agents", params={"team": "alpha"}).status_code == 403
    assert b.get("/api/v1/audit", params={"team": "alpha"}).status_code == 403
    assert all(r["team"] == "beta" for r in b.get("/api/v1/audit").json())
    assert b.get("/api/v1/users").json()[0]["name"] == "bob" and len(b.get("/api/v1/users").json()) == 1


def test_invalid_config_gets_422_naming_field_and_line(plane: Plane) -> None:
    ed = plane.client(plane.user("ed", "editor"))
    bad = config_yaml().replace("level: summary", "level: everything").replace("direction: egress",
                                                                               "direction: sideways")
    r = post_config(ed, bad)
    assert r.status_code == 422, r.text
    issues = {i["path"]: i for i in r.json()["issues"]}
    assert set(issues) == {"stacks.default.plugins[0].config.level", "tap.direction"}
    assert issues["tap.direction"]["line"] == 12
    assert "everything" in issues["stacks.default.plugins[0].config.level"]["message"]
    assert ed.get("/api/v1/configs").json() == []  # nothing stored


def test_plaintext_secrets_are_refused(plane: Plane) -> None:
    ed = plane.client(plane.user("ed", "editor"))
    text = config_yaml().replace("event_stores: [{type: stdout}]", """event_stores:
    - type: pulse
      url: http://127.0.0.1:9
      token: {type: text, value: hunter2-secret}""")
    r = post_config(ed, text)
    assert r.status_code == 422, r.text
    assert r.json()["issues"][0]["path"] == "services.event_stores[0].token"
    assert r.json()["issues"][0]["line"] == 6
    bare = text.replace("{type: text, value: hunter2-secret}", "hunter2-secret")
    assert post_config(ed, bare).json()["issues"][0]["path"] == "services.event_stores[0].token"
    ok = post_config(ed, text.replace("{type: text, value: hunter2-secret}", "{type: env, value: PULSE_TOKEN}"))
    assert ok.status_code == 201, ok.text
    audit = ed.get("/api/v1/audit").text
    assert "hunter2" not in audit and "PULSE_TOKEN" in audit


def test_revoked_token_gets_401(plane: Plane) -> None:
    plane.user("ed", "editor")
    ed = plane.client(plane.user("ed", "editor"))
    made = ed.post("/api/v1/tokens", json={"name": "ci", "scopes": ["read"]})
    assert made.status_code == 201
    ci = plane.client(made.json()["token"])
    assert ci.get("/api/v1/configs").status_code == 200
    assert ed.delete(f"/api/v1/tokens/{made.json()['id']}").status_code == 204
    r = ci.get("/api/v1/configs")
    assert r.status_code == 401 and r.json()["error"] == "token revoked"
    assert plane.client("qct_0000000000000000_" + "a" * 43).get("/api/v1/configs").status_code == 401


def test_session_login_cookie_csrf_and_logout(plane: Plane) -> None:
    plane.user("web", "editor", password="correct horse battery")
    with httpx.Client(base_url=plane.url) as c:
        r = c.post("/api/v1/login", json={"username": "web", "password": "correct horse battery"})
        assert r.status_code == 200, r.text
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        csrf = r.json()["csrf_token"]
        assert c.get("/api/v1/me").json()["user"] == "web"
        # a write through the cookie without (or with a wrong) CSRF token is refused
        assert post_config(c, config_yaml()).status_code == 403
        assert c.post("/api/v1/configs", content=config_yaml().encode(),
                      headers={**YAML, "X-CSRF-Token": "x" * 43}).status_code == 403
        ok = c.post("/api/v1/configs", content=config_yaml().encode(), headers={**YAML, "X-CSRF-Token": csrf})
        assert ok.status_code == 201, ok.text
        assert c.post("/api/v1/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        assert c.get("/api/v1/me").status_code == 401


def test_secure_cookie_by_default(tmp_path: object) -> None:
    from qtap_async.control.auth import Authenticator
    from qtap_async.control.settings import ControlSettings

    header = Authenticator(None, ControlSettings()).cookie_header("v", 10)  # type: ignore[arg-type]
    assert "Secure" in header.split("; ")


def test_failed_logins_are_rate_limited_and_audited(plane: Plane) -> None:
    admin = plane.client(plane.user("web", "admin", password="correct horse battery"))
    with httpx.Client(base_url=plane.url) as c:
        codes = [c.post("/api/v1/login", json={"username": "web", "password": f"wrong-{i}"}).status_code
                 for i in range(plane.settings.login.max_failures_per_user + 1)]
        assert codes[:-1] == [401] * plane.settings.login.max_failures_per_user
        assert codes[-1] == 429
        # even the right password waits until the window has passed
        r = c.post("/api/v1/login", json={"username": "web", "password": "correct horse battery"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    failed = admin.get("/api/v1/audit", params={"action": "login.failed"}).json()
    assert len(failed) == plane.settings.login.max_failures_per_user
    assert all(f["actor"] == "web" and f["address"] == "127.0.0.1" for f in failed)


def test_hostile_input_gets_4xx(plane: Plane) -> None:
    token = plane.user("ed", "admin")
    ed = plane.client(token)
    limits = plane.settings.limits
    big = ed.post("/api/v1/configs", content=b"x" * (limits.max_body_bytes + 1), headers=YAML)
    assert big.status_code == 413
    deep = b"[" * 10_000 + b"]" * 10_000
    assert ed.post("/api/v1/tokens", content=deep, headers={"Content-Type": "application/json"}).status_code == 413
    assert post_config(ed, "a: " + "[" * 50_000 + "]" * 50_000).status_code == 422
    nested_blocks = "".join(" " * i + f"k{i}:\n" for i in range(1200)) + " " * 1200 + "v: 1\n"
    assert post_config(ed, nested_blocks).status_code == 422
    assert ed.post("/api/v1/tokens", content=b"{nope", headers={"Content-Type": "application/json"}
                   ).status_code == 400
    assert ed.post("/api/v1/tokens", json={"name": "x", "extra": 1}).status_code == 422
    assert ed.post("/api/v1/tokens", content=b"{}", headers={"Content-Type": "text/html"}).status_code == 415
    with httpx.Client(base_url=plane.url) as c:
        for header in ("Bearer " + "A" * 5000, "Basic Zm9vOmJhcg==", "Bearer", "\x01\x02", "Bearer qct_zz"):
            r = c.get("/api/v1/configs", headers={"Authorization": header})
            assert r.status_code == 401, (header[:20], r.status_code)
        r = c.get("/api/v1/configs", headers={"Authorization": "Bearer " + "A" * 60_000})
        assert 400 <= r.status_code < 500
        r = c.get("/api/v1/me", headers={"Cookie": "qtap_session=" + "z" * 10_000})
        assert r.status_code == 401
    assert ed.post("/api/v1/configs", content=b"\xff\xfe", headers=YAML).status_code == 400
    assert ed.get("/api/v1/audit", params={"limit": "1e9"}).status_code == 422
    assert ed.get("/api/v1/configs/abc").status_code == 404
    metrics = httpx.get(f"{plane.url}/metrics").text
    assert 'control_rejected_requests_total{status="413"}' in metrics
    assert "control_auth_failures_total" in metrics


def test_config_versions_diff_activate_rollback_and_audit(plane: Plane) -> None:
    ed = plane.client(plane.user("ed", "editor"))
    r1 = post_config(ed, config_yaml("summary"), activate="true", comment="first")
    assert r1.status_code == 201 and r1.json()["activated"] is True
    r2 = post_config(ed, config_yaml("full"))
    assert r2.json()["version"] == 2 and r2.json()["activated"] is False
    d = ed.get("/api/v1/configs/2/diff").json()
    assert "-          level: summary" in d["diff"] and "+          level: full" in d["diff"]
    assert ed.post("/api/v1/configs/2/activate", json={}).json()["version"] == 2
    assert ed.post("/api/v1/configs/1/activate", json={"group": "canary"}).json()["group"] == "canary"
    acts = {a["group"]: a["version"] for a in ed.get("/api/v1/activations").json()}
    assert acts == {"": 2, "canary": 1}
    assert ed.post("/api/v1/configs/rollback", json={}).json()["version"] == 1
    assert ed.post("/api/v1/configs/rollback", json={"group": "canary"}).status_code == 409
    assert ed.get("/api/v1/configs/1").json()["active_for"] == ["", "canary"]
    actions = [(a["action"], a["target"], a["actor"]) for a in reversed(ed.get("/api/v1/audit").json())]
    assert actions == [("config.create", "v1", "ed"), ("config.activate", "v1", "ed"), ("config.create", "v2", "ed"),
                       ("config.activate", "v2", "ed"), ("config.activate", "v1", "ed"),
                       ("config.rollback", "v1", "ed")]
    created = ed.get("/api/v1/audit", params={"action": "config.create"}).json()
    assert "+          level: full" in created[0]["detail"]["diff"]


def test_users_admin_and_audit(plane: Plane) -> None:
    admin = plane.client(plane.user("root", "admin"))
    r = admin.post("/api/v1/users", json={"name": "newbie", "role": "viewer", "password": "a long password 1"})
    assert r.status_code == 201, r.text
    assert admin.post("/api/v1/users", json={"name": "newbie", "role": "viewer"}).status_code == 409
    assert admin.post("/api/v1/users", json={"name": "weak", "role": "viewer", "password": "short"}).status_code == 422
    assert admin.delete("/api/v1/users/root").status_code == 409
    assert admin.delete("/api/v1/users/newbie").status_code == 204
    assert [u["name"] for u in admin.get("/api/v1/users").json()] == ["root"]
    acts = [a["action"] for a in admin.get("/api/v1/audit").json()]
    assert acts[:2] == ["user.remove", "user.create"]


def test_agent_protocol(plane: Plane) -> None:
    admin = plane.client(plane.user("root", "admin"))
    reg = admin.post("/api/v1/registration-tokens", json={"group": "edge", "max_uses": 1}).json()
    r = httpx.post(f"{plane.url}/api/v1/agents/register",
                   json={"registration_token": reg["token"], "hostname": "h1", "kernel": "6.18"})
    assert r.status_code == 201
    again = httpx.post(f"{plane.url}/api/v1/agents/register",
                       json={"registration_token": reg["token"], "hostname": "h2"})
    assert again.status_code == 401  # max_uses 1
    agent = plane.client(r.json()["token"])
    assert agent.get("/api/v1/agent/config").status_code == 204
    assert agent.get("/api/v1/configs").status_code == 403  # an agent identity is not a user
    assert admin.get("/api/v1/agent/config").status_code == 403
    post_config(admin, config_yaml("full"), activate="true", group="edge")
    cfg = agent.get("/api/v1/agent/config").json()
    assert cfg["version"] == 1 and "level: full" in cfg["yaml"]
    assert agent.post("/api/v1/agent/status", json={"running_version": 1, "counters": {"qtap_x_total": 5}}
                      ).status_code == 204
    listed = admin.get("/api/v1/agents").json()[0]
    assert (listed["running_version"], listed["desired_version"], listed["state"]) == (1, 1, "online")
    assert listed["counters"] == {"qtap_x_total": 5} and listed["group"] == "edge"
    agent.post("/api/v1/agent/status", json={"running_version": 1, "refused_version": 2, "refused_reason": "nope"})
    assert admin.get("/api/v1/audit", params={"action": "agent.refused"}).json()[0]["detail"]["reason"] == "nope"
    assert admin.delete(f"/api/v1/agents/{r.json()['agent_id']}").status_code == 204
    assert agent.get("/api/v1/agent/config").status_code == 401


def test_push_channel_announces_new_versions(plane: Plane) -> None:
    admin = plane.client(plane.user("root", "admin"))
    reg = admin.post("/api/v1/registration-tokens", json={}).json()
    token = httpx.post(f"{plane.url}/api/v1/agents/register",
                       json={"registration_token": reg["token"], "hostname": "h"}).json()["token"]
    seen: list[str] = []
    with httpx.stream("GET", f"{plane.url}/api/v1/agent/events", headers={"Authorization": f"Bearer {token}"},
                      timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                seen.append(line)
                if len(seen) == 1:
                    post_config(admin, config_yaml(), activate="true")
                else:
                    break
    assert seen == ['data: {"version":null}', 'data: {"version":1}']


def test_healthz_metrics_openapi(plane: Plane) -> None:
    assert httpx.get(f"{plane.url}/healthz").text == "ok\n"
    assert httpx.get(f"{plane.url}/readyz").status_code == 200
    doc = httpx.get(f"{plane.url}/openapi.json").json()
    assert "/api/v1/configs" in doc["paths"] and "/api/v1/agents" in doc["paths"]
    assert httpx.get(f"{plane.url}/api/v1/configs").status_code == 401
    assert 'control_http_requests_total{route="/api/v1/configs",status="401"} 1' in httpx.get(
        f"{plane.url}/metrics").text


def test_two_instances_on_one_postgres_database(postgres: object, tmp_path: object) -> None:
    """The highly available setup: a session made on one instance works on the other, and a version
    activated through one reaches an agent stream held by the other."""
    from qtap_async.control.app import create_app
    from qtap_async.control.settings import ControlSettings
    from qtap_async.control.store import open_store
    from tests.control.conftest import Postgres, ServerThread

    assert isinstance(postgres, Postgres)
    settings = ControlSettings(data_dir=str(tmp_path), cookie_secure=False, push_poll_s=0.5,
                               database_url=postgres.new_database())
    store_a, store_b = open_store(settings), open_store(settings)
    try:
        with ServerThread(create_app(settings, store_a)) as a, ServerThread(create_app(settings, store_b)) as b:
            plane = Plane(a, store_a, settings, None)
            admin = plane.client(plane.user("root", "admin", password="a long password 1"))
            with httpx.Client(base_url=a) as browser:
                assert browser.post("/api/v1/login", json={"username": "root", "password": "a long password 1"}
                                    ).status_code == 200
                cookie = browser.cookies["qtap_session"]
            assert httpx.get(f"{b}/api/v1/me", headers={"Cookie": f"qtap_session={cookie}"}).json()["user"] == "root"
            reg = admin.post("/api/v1/registration-tokens", json={}).json()["token"]
            agent = httpx.post(f"{a}/api/v1/agents/register", json={"registration_token": reg, "hostname": "h"}).json()
            post_config(admin, config_yaml())
            seen = []
            with httpx.stream("GET", f"{a}/api/v1/agent/events", timeout=30,
                              headers={"Authorization": f"Bearer {agent['token']}"}) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        seen.append(line)
                        if len(seen) == 1:  # activated through the other instance
                            assert httpx.post(f"{b}/api/v1/configs/1/activate", json={},
                                              headers=admin.headers).status_code == 200
                        else:
                            break
            assert seen == ['data: {"version":null}', 'data: {"version":1}']
    finally:
        store_a.close()
        store_b.close()


def test_push_hub_wakes_teams_whose_activations_changed() -> None:
    from qtap_async.control.push import PushHub

    hub = PushHub()
    assert hub.changed([("a", "", 1, 1.0), ("b", "", 1, 1.0)]) == {"a", "b"}  # first look wakes all
    assert hub.changed([("a", "", 1, 1.0), ("b", "", 1, 1.0)]) == set()
    assert hub.changed([("a", "", 2, 2.0), ("b", "", 1, 1.0)]) == {"a"}
    assert hub.changed([("a", "", 2, 2.0), ("b", "", 1, 1.0), ("b", "edge", 1, 3.0)]) == {"b"}
    assert hub.changed([("b", "", 1, 1.0), ("b", "edge", 1, 3.0)]) == {"a"}


def test_audit_log_is_append_only_through_the_api(plane: Plane) -> None:
    """No write method reaches the audit log, for an admin token or an admin's browser session either, and
    the entries read back unchanged afterwards."""
    token = plane.user("root", "admin", password="correct horse battery")
    admin = plane.client(token)
    assert post_config(admin, config_yaml()).status_code == 201  # something worth tampering with
    assert admin.post("/api/v1/users", json={"name": "eve", "role": "viewer"}).status_code == 201
    before = admin.get("/api/v1/audit").json()
    assert {a["action"] for a in before} >= {"config.create", "user.create"}
    first = before[-1]["id"]
    # Every audit route the API documents answers GET only (a new audit route with a write method fails here).
    spec = admin.get("/openapi.json").json()
    audit_paths = [p for p in spec["paths"] if "/audit" in p]
    assert audit_paths == ["/api/v1/audit"]
    assert all(set(spec["paths"][p]) <= {"get", "parameters"} for p in audit_paths), spec["paths"]["/api/v1/audit"]
    edit = {"id": first, "actor": "nobody", "action": "nothing", "target": "", "detail": {}}
    targets = [*audit_paths, f"/api/v1/audit/{first}", f"/api/v1/audit?id={first}"]
    with httpx.Client(base_url=plane.url) as browser:
        login = browser.post("/api/v1/login", json={"username": "root", "password": "correct horse battery"})
        assert login.status_code == 200, login.text
        csrf = {"X-CSRF-Token": login.json()["csrf_token"]}
        for who, client, headers in (("token", admin, {}), ("session", browser, csrf)):
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                for path in targets:
                    r = client.request(method, path, json=edit, headers=headers)
                    # 405 on the route itself (Allow names GET only); the per-entry path does not exist.
                    allowed = (403, 405) if path.split("?")[0] in audit_paths else (403, 404, 405)
                    assert r.status_code in allowed, (who, method, path, r.status_code, r.text)
                    if r.status_code == 405:
                        assert set(r.headers["allow"].replace(" ", "").split(",")) <= {"GET", "HEAD"}, r.headers
    after = admin.get("/api/v1/audit", params={"limit": 1000}).json()
    # Logging in added entries (that is the log working); what was there is exactly as it was.
    assert after[-len(before):] == before
    assert {a["action"] for a in after[:-len(before)]} <= {"login"}
