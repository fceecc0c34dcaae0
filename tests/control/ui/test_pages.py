"""Every page over HTTP against a real control plane and a real Pulse holding the traffic the test sent:
what each page shows, log in and out, roles, CSRF on every form, security headers, and empty states."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from qtap_async.control.settings import PayloadAccess
from tests.control.conftest import Plane, config_yaml
from tests.control.ui.conftest import DOMAINS, EXES, PASSWORD, PulseProcess, Traffic, Ui, make_traffic, start_plane

PAGES = ["/ui/", "/ui/traffic", "/ui/map", "/ui/issues", "/ui/fleet", "/ui/configs", "/ui/configs/new", "/ui/audit",
         "/ui/users"]
ACCESS_ENV, SECRET_ENV = "QTAP_TEST_UI_S3_ACCESS", "QTAP_TEST_UI_S3_SECRET"
STORE = "http://127.0.0.1:19999"  # signing is local: nothing needs to listen there for these tests


@pytest.fixture(scope="module")
def ui(pulse: PulseProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    team = f"ui-pages-{time.time_ns() % 10**9}"
    traffic = make_traffic(team)
    pulse.ingest(pulse.token(team), traffic.requests + traffic.objects + traffic.issues)
    os.environ[ACCESS_ENV], os.environ[SECRET_ENV] = "uitestaccess", "uitestsecret-not-a-real-key"
    payloads = PayloadAccess(endpoint=STORE, access_key_env=ACCESS_ENV, secret_key_env=SECRET_ENV)
    try:
        for plane in start_plane(tmp_path_factory.mktemp("ui-plane"), pulse.url, pulse.token(team, ("query",)),
                                 payloads, page_size=10):
            yield Ui(plane, pulse, traffic)
    finally:
        os.environ.pop(ACCESS_ENV, None)
        os.environ.pop(SECRET_ENV, None)


@pytest.fixture(scope="module")
def admin(ui: Ui) -> tuple[httpx.Client, str]:
    return ui.session("admin", PASSWORD)


def assert_secure_headers(r: httpx.Response) -> None:
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'" and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert directives["frame-ancestors"] == "'none'" and r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_every_page_needs_a_login_and_comes_back_after_it(ui: Ui) -> None:
    c = httpx.Client(base_url=ui.plane.url)
    for page in PAGES:
        r = c.get(page)
        assert r.status_code == 303, page
        assert r.headers["location"] == f"/ui/login?next={page}"
    assert c.get("/").headers["location"] == "/ui/"
    login = c.get("/ui/login?next=/ui/map")
    assert login.status_code == 200 and '<label for="password">' in login.text
    assert_secure_headers(login)
    bad = c.post("/ui/login", data={"username": "admin", "password": "wrong password!", "next": "/ui/map"})
    assert bad.status_code == 401 and "wrong user name or password" in bad.text
    assert "qtap_session" not in bad.headers.get("set-cookie", "")
    ok = c.post("/ui/login", data={"username": "admin", "password": PASSWORD, "next": "/ui/map"})
    assert ok.status_code == 303 and ok.headers["location"] == "/ui/map"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # An open redirect is not possible: a next outside /ui goes to the dashboard.
    c2 = httpx.Client(base_url=ui.plane.url)
    r = c2.post("/ui/login", data={"username": "admin", "password": PASSWORD, "next": "//evil.example/x"})
    assert r.headers["location"] == "/ui/"
    # A login form posted from another site is refused before the password is looked at.
    r = httpx.post(f"{ui.plane.url}/ui/login", data={"username": "admin", "password": PASSWORD},
                   headers={"Origin": "https://evil.example"})
    assert r.status_code == 403


def test_every_page_renders_with_a_title_labelled_fields_and_secure_headers(
        ui: Ui, admin: tuple[httpx.Client, str]) -> None:
    c, _csrf = admin
    for page in PAGES:
        r = c.get(page)
        assert r.status_code == 200, (page, r.text[:500])
        assert_secure_headers(r)
        assert re.search(r"<title>[^<]+ · qtap</title>", r.text), page
        assert 'style="' not in r.text and "<script>" not in r.text and " on" + "click=" not in r.text, page
        ids = set(re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', r.text))
        labelled = set(re.findall(r'<label for="([^"]+)"', r.text))
        assert ids <= labelled, (page, ids - labelled)
        hidden_free = re.findall(r'<(?:input|select|textarea)(?![^>]*type="hidden")(?![^>]*\bid=)[^>]*>', r.text)
        assert hidden_free == [], (page, hidden_free)
    assert c.get("/ui/static/ui.js").status_code == 200
    assert c.get("/ui/static/ui.css").status_code == 200


def _cards(html: str) -> dict[str, str]:
    return dict(re.findall(r'<p id="total-([a-z0-9-]+)">([^<]+)</p>', html))


def test_dashboard_numbers_are_the_traffic_sent(ui: Ui, admin: tuple[httpx.Client, str]) -> None:
    c, _ = admin
    t = ui.traffic
    cards = _cards(c.get("/ui/", params={"range": "1h"}).text)
    assert int(cards["requests"]) == len(t.requests)
    assert cards["error-rate"] == f"{t.errors / len(t.requests) * 100:.2f}%"
    durations = sorted(r["duration_ns"] for r in t.requests)
    # The dashboard's percentiles come from latency histograms: within 1 % of a duration at the median's rank.
    p50 = float(cards["p50"].removesuffix(" ms")) * 1e6
    n = len(durations)
    near = durations[(n - 1) // 2 - 1:n // 2 + 2]
    assert min(near) * 0.99 <= p50 <= max(near) * 1.01, (cards["p50"], near)
    page = c.get("/ui/").text
    for d in DOMAINS:
        assert d in page
    assert page.count('<path class="line') == 5  # rate, errors, p50/p95/p99
    # 15 minutes see only the requests of the last 15 minutes (one every 7 s, the newest 7 s ago)
    quarter = _cards(c.get("/ui/", params={"range": "15m"}).text)
    expected = sum(1 for r in t.requests if r["ts"] >= time.time_ns() - 900 * 10**9)
    assert abs(int(quarter["requests"]) - expected) <= 1
    assert c.get("/ui/", params={"range": "forever"}).status_code == 422
    # A day starts on the whole hour 24 to 25 hours back (Pulse reads that hour from its rollup) and says so;
    # an hour starts exactly an hour back.
    before = time.time()
    day = c.get("/ui/", params={"range": "24h"}).text
    since = re.search(r'<p class="since" id="since">From (\d{4}-\d\d-\d\d \d\d:\d\d) UTC to now</p>', day)
    assert since, day[:3000]
    start = datetime.strptime(since.group(1), "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()
    assert start % 3600 == 0 and before - 25 * 3600 <= start <= time.time() - 24 * 3600
    assert int(_cards(day)["requests"]) == len(t.requests)
    hour = re.search(r'id="since">From (\d{4}-\d\d-\d\d \d\d:\d\d) UTC', c.get("/ui/", params={"range": "1h"}).text)
    assert hour and abs(datetime.strptime(hour.group(1), "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()
                        - (time.time() - 3600)) <= 120


def _rows(html: str) -> list[str]:
    return re.findall(r'<a href="/ui/traffic/([^"?]+)\?ts=\d+">', html)


def test_traffic_explorer_filters_and_pages(ui: Ui, admin: tuple[httpx.Client, str]) -> None:
    c, _ = admin
    t = ui.traffic
    newest = [r["id"] for r in sorted(t.requests, key=lambda r: -r["ts"])]
    first = c.get("/ui/traffic", params={"range": "1h"})
    assert _rows(first.text) == newest[:10]
    nxt = re.search(r'<a href="([^"]+)" rel="next">', first.text)
    assert nxt
    second = c.get(nxt.group(1).replace("&amp;", "&"))
    assert _rows(second.text) == newest[10:20] and 'rel="prev"' in second.text

    def ids(**params: str) -> set[str]:
        out: set[str] = set()
        page = 0
        while True:
            html = c.get("/ui/traffic", params={"range": "1h", "page": str(page), **params}).text
            got = _rows(html)
            out.update(got)
            if 'rel="next"' not in html:
                return out
            page += 1

    assert ids(status="5xx") == {r["id"] for r in t.requests if r["status"] >= 500}
    assert ids(status="4xx", domain=DOMAINS[1]) == {r["id"] for r in t.requests
                                                   if r["status"] == 404 and r["domain"] == DOMAINS[1]}
    assert ids(exe=EXES[1], method="post") == {r["id"] for r in t.requests
                                               if r["exe"] == EXES[1] and r["method"] == "POST"}
    assert ids(container="c0ffee1234567890", q="PART3") == {
        r["id"] for r in t.requests if r["container_id"] and r["path"].endswith("part3")}
    empty = c.get("/ui/traffic", params={"domain": "nowhere.example"}).text
    assert 'id="empty"' in empty and "No request matches" in empty
    assert c.get("/ui/traffic", params={"status": "6xx"}).status_code == 422


def test_request_detail_and_payload_url_from_the_store_not_the_page(ui: Ui, admin: tuple[httpx.Client, str]) -> None:
    c, _ = admin
    t = ui.traffic
    with_obj = next(r for r in t.requests if r["id"] == "tx00040-req")
    page = c.get(f"/ui/traffic/{with_obj['id']}", params={"ts": with_obj["ts"]})
    assert page.status_code == 200, page.text
    assert f"{with_obj['method']} {with_obj['domain']}{with_obj['path']}" in page.text
    assert "Show headers and body" in page.text
    # The store's origin, and only it, is added to connect-src for the browser's fetch.
    assert f"connect-src 'self' {STORE};" in page.headers["content-security-policy"]
    src = re.search(r'data-src="([^"]+)"', page.text)
    assert src
    r = c.get(src.group(1).replace("&amp;", "&"))
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    info = r.json()
    url = urlsplit(info["url"])
    assert f"{url.scheme}://{url.netloc}" == STORE and url.path == "/ui-bucket/objects/tx00040"
    query = parse_qs(url.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and int(query["X-Amz-Expires"][0]) == 300
    assert "X-Amz-Signature" in query
    # The page itself carries no signed URL; no secret of the signer appears anywhere.
    assert "X-Amz-Signature" not in page.text and "uitestsecret" not in page.text + r.text
    without = next(r for r in t.requests if r["id"] == "tx00001-req")
    page = c.get(f"/ui/traffic/{without['id']}", params={"ts": without["ts"]})
    assert page.status_code == 200 and 'id="no-object"' in page.text
    assert c.get("/ui/traffic/tx99999-req", params={"ts": with_obj["ts"]}).status_code == 404
    assert c.get(src.group(1).replace("&amp;", "&").replace("obj00040", "obj00041")).status_code == 404


def test_dependency_map_draws_every_edge(ui: Ui, admin: tuple[httpx.Client, str]) -> None:
    c, _ = admin
    html = c.get("/ui/map", params={"range": "1h"}).text
    pairs = {(r["exe"], r["domain"]) for r in ui.traffic.requests}
    assert html.count('<g class="edge') == len(pairs) == 6
    assert html.count('<g class="node src">') == 2 and html.count('<g class="node dst">') == 3
    for exe, domain in pairs:
        sent = [r for r in ui.traffic.requests if r["exe"] == exe and r["domain"] == domain]
        rate = sum(1 for r in sent if r["status"] >= 500) / len(sent)
        css = "bad" if rate >= 0.05 else "warn" if rate > 0 else "ok"
        # Colour by error rate: curl's even requests include every 8th (a 503), checkout's odd ones none.
        assert re.search(rf'<g class="edge {css}"><path [^>]*><title>{exe.rsplit("/", 1)[-1]} -&gt; {domain}: '
                         rf'{len(sent)} requests, {rate * 100:.2f}% errors', html), (exe, domain)


def _register(plane: Plane, token: str) -> tuple[str, str]:
    admin = plane.client(token)
    reg = admin.post("/api/v1/registration-tokens", json={"group": "edge"}).json()
    joined = httpx.post(f"{plane.url}/api/v1/agents/register",
                        json={"registration_token": reg["token"], "hostname": "web-01",
                              "agent_version": "0.1.0"}).json()
    return joined["agent_id"], joined["token"]


def test_fleet_shows_agents_their_versions_and_counters(ui: Ui, admin: tuple[httpx.Client, str]) -> None:
    c, _ = admin
    plane = ui.plane
    assert 'id="empty"' in c.get("/ui/fleet").text
    token = plane.token("admin", ["admin"])
    agent_id, agent_token = _register(plane, token)
    r = httpx.post(f"{plane.url}/api/v1/agent/status", headers={"Authorization": f"Bearer {agent_token}"},
                   json={"running_version": 3, "health": "ok", "agent_version": "0.1.0", "kernel": "6.1.0",
                         "counters": {"qtap_ringbuf_drops_total": 4, "qtap_events_total": 1234}})
    assert r.status_code == 204, r.text
    html = c.get("/ui/fleet").text
    assert "web-01" in html and "online" in html and "v3 / v-" in html
    detail = c.get(f"/ui/fleet/{agent_id}").text
    assert "qtap_events_total" in detail and "1234" in detail and "6.1.0" in detail
    assert c.get("/ui/fleet/nope").status_code == 404


def test_config_create_validate_activate_roll_back_and_audit(ui: Ui) -> None:
    ed, csrf = ui.session("ed", PASSWORD)
    bad = config_yaml().replace("direction: egress", "direction: sideways")
    r = ed.post("/ui/configs/new", data={"csrf": csrf, "yaml": bad, "comment": "broken"})
    assert r.status_code == 422
    assert "tap.direction" in r.text and 'href="#line-12">line 12</a>' in r.text
    assert re.search(r'<span id="line-12" class="bad">', r.text)
    assert "sideways" in r.text  # the posted text is kept in the editor
    r = ed.post("/ui/configs/new", data={"csrf": csrf, "yaml": config_yaml(), "comment": "first"})
    assert r.status_code == 303
    v1 = int(r.headers["location"].rsplit("/", 1)[1])
    r = ed.post("/ui/configs/new", data={"csrf": csrf, "yaml": config_yaml("full"), "comment": "full bodies",
                                         "activate": "on", "group": ""})
    assert r.status_code == 303
    v2 = int(r.headers["location"].rsplit("/", 1)[1])
    assert v2 == v1 + 1
    acts = ui.plane.store.activations("alpha")
    assert [(a.group, a.version) for a in acts] == [("", v2)]
    detail = ed.get(f"/ui/configs/{v2}").text
    assert "level: full" in detail and '<span class="add">+          level: full</span>' in detail
    assert ed.post(f"/ui/configs/{v1}/activate", data={"csrf": csrf, "group": "edge"}).status_code == 303
    assert ed.post("/ui/configs/rollback", data={"csrf": csrf, "group": ""}).status_code == 409  # v2 is the first
    assert {(a.group, a.version) for a in ui.plane.store.activations("alpha")} == {("", v2), ("edge", v1)}
    audit = ed.get("/ui/audit", params={"action": "config.activate"}).text
    assert audit.count("<td>config.activate</td>") == 2 and "<td>config.create</td>" not in audit
    assert "level: full" in ed.get("/ui/audit", params={"action": "config.create"}).text  # the diff


def test_viewers_see_no_edit_controls_and_their_writes_get_403(ui: Ui) -> None:
    vi, csrf = ui.session("vi", PASSWORD)
    html = vi.get("/ui/configs").text
    assert 'id="new-config"' not in html and "Roll back" not in html
    versions = ui.plane.store.list_configs("alpha", 1, 0)
    if versions:
        assert 'id="activate"' not in vi.get(f"/ui/configs/{versions[0].version}").text
    before = len(ui.plane.store.list_configs("alpha", 100, 0))
    assert vi.get("/ui/configs/new").status_code == 403
    assert vi.post("/ui/configs/new", data={"csrf": csrf, "yaml": config_yaml()}).status_code == 403
    assert vi.post("/ui/configs/1/activate", data={"csrf": csrf}).status_code == 403
    assert vi.post("/ui/configs/rollback", data={"csrf": csrf}).status_code == 403
    assert len(ui.plane.store.list_configs("alpha", 100, 0)) == before


def test_issues_are_what_detect_errors_reported(ui: Ui, admin: tuple[httpx.Client, str]) -> None:
    c, _ = admin
    html = c.get("/ui/issues").text
    assert '<a href="/ui/issues" aria-current="page">Issues</a>' in html
    newest = sorted(ui.traffic.issues, key=lambda i: -i["ts"])
    rows = re.findall(r'<td class="path">([^<]+)</td>', html)
    assert rows == [i["summary"].replace(">", "&gt;") for i in newest[:10]]  # page_size 10, newest first
    assert "Older" in html
    page2 = c.get("/ui/issues", params={"page": 1}).text
    assert re.findall(r'<td class="path">([^<]+)</td>', page2)[0] == newest[10]["summary"].replace(">", "&gt;")
    critical = c.get("/ui/issues", params={"severity": "critical"}).text
    n_critical = sum(1 for i in ui.traffic.issues if i["severity"] == "critical")
    assert critical.count("<td>critical</td>") == min(10, n_critical)
    assert "<td>error</td>" not in critical
    none = c.get("/ui/issues", params={"rule": "no-such-rule"}).text
    assert 'id="empty"' in none and "No issue matches" in none


def test_users_and_tokens_are_for_admins(ui: Ui, admin: tuple[httpx.Client, str]) -> None:
    c, csrf = admin
    html = c.get("/ui/users").text
    assert '<a href="/ui/users" aria-current="page">Users and tokens</a>' in html
    for name in ("admin", "ed", "vi"):
        assert f"<tr><td>{name}</td>" in html
    assert 'aria-label="Remove admin' not in html  # not oneself
    # A token's secret never appears: only its id.
    token = ui.plane.token("ed", ["read"])
    html = c.get("/ui/users").text
    assert token not in html
    # Add a user, see the error of a short password, remove them again; each change is audited.
    bad = c.post("/ui/users", data={"csrf": csrf, "name": "newbie", "role": "editor", "password": "short"})
    assert bad.status_code == 422 and 'id="error"' in bad.text and 'value="newbie"' in bad.text
    r = c.post("/ui/users", data={"csrf": csrf, "name": "newbie", "role": "editor", "password": "a long password 1"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/users"
    assert "<tr><td>newbie</td><td>local</td>\n<td>editor</td>" in c.get("/ui/users").text
    again = c.post("/ui/users", data={"csrf": csrf, "name": "newbie", "role": "viewer", "password": ""})
    assert again.status_code == 409 and "already in team" in again.text
    assert ui.session("newbie", "a long password 1")[0].get("/ui/configs").status_code == 200
    assert c.post("/ui/users/newbie/remove", data={"csrf": csrf}).status_code == 303
    assert "<tr><td>newbie</td>" not in c.get("/ui/users").text
    actions = [r.action for r in ui.plane.store.query_audit("alpha", action=None, actor="admin", since=None,
                                                             limit=50, offset=0)]
    assert "user.create" in actions and "user.remove" in actions
    # Revoke ed's token: the page says so and the token stops working.
    tid = next(t.id for t in ui.plane.store.list_api_tokens(ui.plane.store.user_ids_in_team("alpha"))
               if t.user == "ed" and t.revoked_at is None)
    assert httpx.get(f"{ui.plane.url}/ui/configs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert c.post(f"/ui/tokens/{tid}/revoke", data={"csrf": csrf}).status_code == 303
    assert c.post(f"/ui/tokens/{tid}/revoke", data={"csrf": csrf}).status_code == 409
    assert f'aria-label="Revoke token {tid}"' not in c.get("/ui/users").text
    # Viewers and editors: no nav entry, no page, and a direct POST is refused before anything changes.
    for name in ("vi", "ed"):
        other, other_csrf = ui.session(name, PASSWORD)
        assert "/ui/users" not in other.get("/ui/configs").text
        assert other.get("/ui/users").status_code == 403
        r = other.post("/ui/users", data={"csrf": other_csrf, "name": f"sneaky-{name}", "role": "admin",
                                          "password": "a long password 1"})
        assert r.status_code == 403
        assert ui.plane.store.user_row(f"sneaky-{name}") is None
        assert other.post("/ui/users/admin/remove", data={"csrf": other_csrf}).status_code == 403


def test_forms_need_the_sessions_csrf_token(ui: Ui) -> None:
    ed, csrf = ui.session("ed", PASSWORD)
    before = len(ui.plane.store.list_configs("alpha", 100, 0))
    assert ed.post("/ui/configs/new", data={"yaml": config_yaml()}).status_code == 403
    assert ed.post("/ui/configs/new", data={"csrf": "x" * 43, "yaml": config_yaml()}).status_code == 403
    _other, other_csrf = ui.session("ed", PASSWORD)  # another session's token is not this session's
    assert other_csrf != csrf
    assert ed.post("/ui/configs/new", data={"csrf": other_csrf, "yaml": config_yaml()}).status_code == 403
    assert ed.post("/ui/configs/new", content=b'{"yaml": "x"}',
                   headers={"Content-Type": "application/json"}).status_code == 415
    assert len(ui.plane.store.list_configs("alpha", 100, 0)) == before
    # Logging out needs the token too, then ends the session.
    assert ed.post("/ui/logout", data={"csrf": ""}).status_code == 403
    r = ed.post("/ui/logout", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert ed.get("/ui/configs").status_code == 303


def test_bearer_tokens_and_agents(ui: Ui) -> None:
    # An API token works for reading pages (no CSRF: browsers never send it on their own); agents get 403.
    token = ui.plane.token("vi", ["read"])
    r = httpx.get(f"{ui.plane.url}/ui/configs", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    _agent_id, agent_token = _register(ui.plane, ui.plane.token("admin", ["admin"]))
    r = httpx.get(f"{ui.plane.url}/ui/", headers={"Authorization": f"Bearer {agent_token}"})
    assert r.status_code == 403


def test_empty_states_say_what_to_do(pulse: PulseProcess, tmp_path: Path) -> None:
    # A Pulse with no traffic for the token's team, then no Pulse configured at all.
    for plane in start_plane(tmp_path / "a", pulse.url, pulse.token(f"ui-empty-{time.time_ns() % 10**9}", ("query",))):
        u = Ui(plane, pulse, Traffic("", 0, [], []))
        c, _ = u.session("vi", PASSWORD)
        assert "No requests in the last 24h" in c.get("/ui/").text
        assert "No requests in the last 24h" in c.get("/ui/traffic").text
        assert "no edges to draw" in c.get("/ui/map").text
        assert "No agent has joined" in c.get("/ui/fleet").text
        assert "No config versions yet" in c.get("/ui/configs").text
        assert "No issues in the last 24h" in c.get("/ui/issues").text
    for plane in start_plane(tmp_path / "b", "", None):
        u = Ui(plane, pulse, Traffic("", 0, [], []))
        c, _ = u.session("vi", PASSWORD)
        for page in ("/ui/", "/ui/traffic", "/ui/map"):
            r = c.get(page)
            assert r.status_code == 200 and "no Pulse configured: set pulse_url" in r.text, page
