"""The web UI in a real browser: Debian's headless Chromium driven through chromium-driver (selenium), over a
real control plane, a real Pulse holding the traffic, and a real MinIO holding a payload object stored by
the agent's own S3 object store. The payload is fetched by the browser from MinIO, which the network log
shows. Screenshots of each page go to $QTAP_SCREENSHOT_DIR when it is set (docs/images come from there).

Needs `scripts/services up` (MinIO) and `QTAP_BROWSER_TESTS=1 scripts/bootstrap` (chromium); without them
these tests FAIL saying so."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest

from qtap_async.control.settings import PayloadAccess
from qtap_async.sinks.base import StoredObject
from qtap_async.sinks.s3 import S3ObjectSink
from tests.control.conftest import config_yaml
from tests.control.ui.conftest import DOMAINS, PASSWORD, PulseProcess, Ui, make_traffic, start_plane

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[3]
ENV_FILE = ROOT / ".services" / "env"
ACCESS_ENV, SECRET_ENV = "QTAP_TEST_UI_MINIO_ACCESS", "QTAP_TEST_UI_MINIO_SECRET"
BODY = {"order": 4711, "items": [{"sku": "A-1", "qty": 2}], "note": "payload from MinIO"}


def _minio() -> dict[str, str]:
    if not ENV_FILE.exists():
        pytest.fail(f"browser tests need MinIO: {ENV_FILE} is missing; run `scripts/services up`", pytrace=False)
    env = dict(line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if "=" in line)
    try:
        httpx.get(f"{env['QTAP_S3_ENDPOINT']}/minio/health/ready", timeout=3).raise_for_status()
    except httpx.HTTPError as e:
        pytest.fail(f"MinIO at {env['QTAP_S3_ENDPOINT']} does not answer ({e}); run `scripts/services up`",
                    pytrace=False)
    return env


def _payload(tx: str) -> bytes:
    """An object in the shape http_capture stores at level full (JSON, bodies as text)."""
    doc = {"transaction_id": tx, "level": "full", "protocol": "http/1.1",
           "request": {"method": "POST", "url": f"https://{DOMAINS[0]}/v1/items/9/part0", "path": "/v1/items/9/part0",
                       "headers": [["content-type", "application/json"], ["user-agent", "curl/8.5"]],
                       "body": {"text": json.dumps({"sku": "A-1"})}, "body_truncated": False},
           "response": {"status": 201, "headers": [["content-type", "application/json"]],
                        "body": {"text": json.dumps(BODY)}, "body_truncated": False}}
    return msgspec.json.encode(doc)


async def _store_object(env: dict[str, str], tx: str) -> dict[str, Any]:
    sink = S3ObjectSink(env["QTAP_S3_BUCKET"], endpoint=env["QTAP_S3_ENDPOINT"], region=env["QTAP_S3_REGION"],
                        access_key=env["QTAP_S3_ACCESS_KEY"], secret_key=env["QTAP_S3_SECRET_KEY"],
                        key="ui-test/{{DIGEST}}", name="minio")
    await sink.start()
    try:
        data = _payload(tx)
        ref = await sink.put(StoredObject(data, "application/json", 1040, tx))
        assert ref.digest == hashlib.sha256(data).hexdigest()
    finally:
        await sink.close()
    return msgspec.to_builtins(ref)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def system(pulse: PulseProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ui, dict[str, str]]]:
    env = _minio()
    team = f"ui-browser-{time.time_ns() % 10**9}"
    traffic = make_traffic(team, objects=False)
    ref = asyncio.run(_store_object(env, "tx00040"))
    pulse.ingest(pulse.token(team), [*traffic.requests, *traffic.issues, ref])
    os.environ[ACCESS_ENV], os.environ[SECRET_ENV] = env["QTAP_S3_ACCESS_KEY"], env["QTAP_S3_SECRET_KEY"]
    payloads = PayloadAccess(endpoint=env["QTAP_S3_ENDPOINT"], region=env["QTAP_S3_REGION"],
                             access_key_env=ACCESS_ENV, secret_key_env=SECRET_ENV)
    try:
        for plane in start_plane(tmp_path_factory.mktemp("ui-browser"), pulse.url, pulse.token(team, ("query",)),
                                 payloads, page_size=25):
            yield Ui(plane, pulse, traffic), env
    finally:
        os.environ.pop(ACCESS_ENV, None)
        os.environ.pop(SECRET_ENV, None)


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver_bin = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if chromium is None or not Path(driver_bin).exists():
        pytest.fail("browser tests need Debian's chromium and chromium-driver (QTAP_BROWSER_TESTS=1 "
                    "scripts/bootstrap installs them)", pytrace=False)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--disable-gpu", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    # The DevTools network events: which origin served which request.
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # Selenium Manager must not try to download a driver: Debian's is given.
    d = webdriver.Chrome(options=opts, service=Service(executable_path=driver_bin))
    d.set_page_load_timeout(30)
    try:
        yield d
    finally:
        d.quit()


class Page:
    def __init__(self, driver: Any, base: str, name: str) -> None:
        self.d, self.base, self.name = driver, base, name

    def go(self, path: str) -> None:
        self.d.get(self.base + path)

    def shot(self, label: str) -> None:
        out = os.environ.get("QTAP_SCREENSHOT_DIR")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            self.d.save_screenshot(str(Path(out) / f"{label}.png"))

    def wait(self, css: str, timeout: float = 15) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.d, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    def submit(self, action: Callable[[], object], css: str, timeout: float = 15) -> Any:
        """Run ``action`` (a click, Enter, a form submit) and wait for the page it loads to show ``css``.

        Waiting for ``css`` alone can match the page being left, when it has the same element: the next
        lookup then finds that element stale once the new page replaces it."""
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        old = self.find("html")
        action()
        WebDriverWait(self.d, timeout).until(ec.staleness_of(old))
        return self.wait(css, timeout)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.d.find_elements(By.CSS_SELECTOR, css))

    def login(self, user: str, nxt: str = "/ui/") -> None:
        self.go(f"/ui/login?next={nxt}")
        self.find("#username").send_keys(user)
        self.find("#password").send_keys(PASSWORD)
        self.submit(self.find("#password").submit, "main#main h1")
        assert urlsplit(self.d.current_url).path == nxt, self.d.current_url

    def check_accessible(self) -> None:
        """A title, every field labelled, every control reachable from the keyboard, no script errors."""
        assert self.d.title.endswith("· qtap") and len(self.d.title) > len(" · qtap"), self.d.title
        problems = self.d.execute_script("""
            const out = [];
            for (const f of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
              const byFor = f.id && document.querySelector('label[for="' + f.id + '"]');
              if (!byFor && !f.getAttribute('aria-label') && !f.closest('label')) out.push('unlabelled ' + f.outerHTML);
            }
            for (const c of document.querySelectorAll('a[href], button, input, select, textarea')) {
              if (c.tabIndex < 0 && c.type !== 'hidden') out.push('not focusable ' + c.outerHTML);
            }
            if (!document.querySelector('main')) out.push('no main landmark');
            return out;""")
        assert problems == [], problems
        # Tab reaches the first control of the page content (focus order includes the navigation first).
        from selenium.webdriver.common.keys import Keys

        body = self.find("body")
        seen = set()
        for _ in range(40):
            body.send_keys(Keys.TAB)
            seen.add(self.d.execute_script("return document.activeElement && document.activeElement.tagName"))
        assert seen & {"A", "BUTTON", "INPUT", "SELECT", "TEXTAREA"}, seen
        # Script errors and CSP violations; a page's own 4xx (an invalid config answers 422) is not one.
        logs = self.d.get_log("browser")
        errors = [e for e in logs if e["level"] == "SEVERE" and not (
            e["source"] == "network" and " 422 " in e["message"] and "/ui/configs/new" in e["message"])]
        assert errors == [], errors

    def network(self) -> list[dict[str, Any]]:
        """(url, status, remote address) of every response the page received, from DevTools."""
        out = []
        for entry in self.d.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg["method"] == "Network.responseReceived":
                r = msg["params"]["response"]
                out.append({"url": r["url"], "status": r["status"], "type": msg["params"].get("type", ""),
                            "size": r.get("encodedDataLength", 0)})
        return out


def test_admin_browses_dashboard_explorer_payload_map_and_fleet(system: tuple[Ui, dict[str, str]],
                                                                 browser: Any) -> None:
    ui, env = system
    p = Page(browser, ui.plane.url, "admin")
    p.login("admin")
    # The dashboard's numbers are the traffic that was sent.
    p.go("/ui/?range=1h")
    assert int(p.find("#total-requests").text) == len(ui.traffic.requests)
    assert p.find("#total-error-rate").text == f"{ui.traffic.errors / len(ui.traffic.requests) * 100:.2f}%"
    assert len(p.all("figure.chart svg path.line")) == 5
    p.check_accessible()
    p.shot("dashboard")

    # The explorer: filter to one domain and POSTs, find the request with the stored object.
    p.go("/ui/traffic?range=1h")
    p.find("#f-domain").send_keys(DOMAINS[0])
    p.find("#f-method").send_keys("POST")
    p.submit(p.find("#f-method").submit, "#requests")
    rows = p.all("#requests tbody tr")
    want = [r for r in ui.traffic.requests if r["domain"] == DOMAINS[0] and r["method"] == "POST"]
    assert len(rows) == min(25, len(want))
    assert all(DOMAINS[0] in r.text and "POST" in r.text for r in rows)
    p.check_accessible()
    p.shot("traffic")
    target = next(r for r in ui.traffic.requests if r["id"] == "tx00040-req")
    p.go(f"/ui/traffic/tx00040-req?ts={target['ts']}")
    assert f"{target['method']} {target['domain']}{target['path']}" in p.find("#meta").text
    browser.get_log("performance")  # forget the page load; watch what the payload button does
    p.find("button.load-payload").click()
    p.wait(".payload[data-loaded=true]", 20)
    shown = p.find(".payload").text
    assert '"note": "payload from MinIO"' in shown  # pretty-printed JSON
    assert "Response 201" in shown and "content-type" in shown
    p.check_accessible()
    p.shot("request")
    net = p.network()
    minio = urlsplit(env["QTAP_S3_ENDPOINT"]).netloc
    from_store = [n for n in net if urlsplit(n["url"]).netloc == minio]
    assert len(from_store) == 1 and from_store[0]["status"] == 200, net
    assert "/ui-test/" in from_store[0]["url"] and "X-Amz-Signature=" in from_store[0]["url"]
    from_plane = [n for n in net if urlsplit(n["url"]).netloc == urlsplit(ui.plane.url).netloc]
    # The control plane answered only the small JSON with the URL, never the object.
    assert [urlsplit(n["url"]).path for n in from_plane] == [
        f"/ui/traffic/tx00040-req/objects/{_ref_id(ui)}/url"], from_plane

    p.go("/ui/map?range=1h")
    assert len(p.all("#map g.edge")) == 6
    p.check_accessible()
    p.shot("map")

    p.go("/ui/fleet")
    assert p.find("#empty").text.startswith("No agent has joined")
    p.check_accessible()
    p.shot("fleet-empty")


def _ref_id(ui: Ui) -> str:
    rows = httpx.get(f"{ui.pulse.url}/v1/query/transactions/tx00040/objects",
                     headers={"Authorization": f"Bearer {ui.pulse.token(ui.traffic.team, ('query',))}"}).json()
    return str(rows[0]["id"])


def test_editor_fixes_an_invalid_config_activates_it_and_the_agent_reports_it(
        system: tuple[Ui, dict[str, str]], browser: Any) -> None:
    ui, _ = system
    plane = ui.plane
    admin = plane.client(plane.token("admin", ["admin"]))
    reg = admin.post("/api/v1/registration-tokens", json={}).json()
    agent = httpx.post(f"{plane.url}/api/v1/agents/register",
                       json={"registration_token": reg["token"], "hostname": "edge-7", "agent_version": "0.1.0"}).json()
    agent_auth = {"Authorization": f"Bearer {agent['token']}"}

    p = Page(browser, plane.url, "editor")
    p.login("ed", "/ui/configs")
    p.submit(p.find("#new-config").click, "#yaml")
    area = p.find("#yaml")
    area.clear()
    area.send_keys(config_yaml().replace("direction: egress", "direction: sideways"))
    p.find("#comment").send_keys("capture everything")
    p.find("#activate").click()
    p.submit(p.find("form.stack button[type=submit]").click, "#issues")
    assert "tap.direction" in p.find("#issues").text
    bad = p.find("#line-12")
    assert "bad" in bad.get_attribute("class") and "direction: sideways" in bad.text
    p.check_accessible()
    p.shot("config-invalid")
    area = p.find("#yaml")
    area.clear()
    area.send_keys(config_yaml("full"))
    assert p.find("#activate").is_selected()  # kept from the first try
    p.submit(p.find("form.stack button[type=submit]").click, "#active-for")
    version = int(urlsplit(browser.current_url).path.rsplit("/", 1)[1])
    assert "team default" in p.find("#active-for").text
    p.check_accessible()
    p.shot("config")

    # The agent fetches what the control plane pushes and reports it; the fleet page shows that version.
    got = httpx.get(f"{plane.url}/api/v1/agent/config", headers=agent_auth).json()
    assert got["version"] == version and "level: full" in got["yaml"]
    httpx.post(f"{plane.url}/api/v1/agent/status", headers=agent_auth,
               json={"running_version": version, "health": "ok", "counters": {"qtap_events_total": 7}})
    p.go("/ui/fleet")
    row = p.find("#agents tbody tr")
    assert "edge-7" in row.text and f"v{version} / v{version}" in row.text
    p.check_accessible()
    p.shot("fleet")
    p.go("/ui/configs")
    p.shot("configs")
    p.go("/ui/audit")
    assert "config.activate" in p.find("#audit").text
    p.check_accessible()
    p.shot("audit")


def test_a_viewer_sees_no_edit_controls_and_a_direct_post_gets_403(system: tuple[Ui, dict[str, str]],
                                                                    browser: Any) -> None:
    ui, _ = system
    p = Page(browser, ui.plane.url, "viewer")
    p.login("vi", "/ui/configs")
    assert p.all("#new-config") == [] and p.all("form[action$='/activate']") == []
    assert p.all("form[action='/ui/configs/rollback']") == []
    # The viewer's own session and CSRF token, posting the editor's form by hand from the page.
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const csrf = document.querySelector('input[name=csrf]').value;
        fetch('/ui/configs/new', {method: 'POST', credentials: 'same-origin',
              headers: {'Content-Type': 'application/x-www-form-urlencoded'},
              body: new URLSearchParams({csrf: csrf, yaml: 'version: 2\\n'})}).then(r => done(r.status));""")
    assert status == 403
    p.go("/ui/configs/new")  # the editor itself is for editors
    assert browser.title == "Error 403 · qtap" and "needs the editor role" in p.find(".error").text
    p.shot("viewer-403")


def test_issues_and_users_pages_and_what_a_viewer_may_not_do_there(system: tuple[Ui, dict[str, str]],
                                                                   browser: Any) -> None:
    ui, _ = system
    p = Page(browser, ui.plane.url, "admin")
    p.login("admin", "/ui/issues")
    assert browser.title == "Issues · qtap"
    assert len(p.all("#issues tbody tr")) == min(25, len(ui.traffic.issues))
    p.find("#f-severity").send_keys("critical")
    p.submit(p.find("#f-severity").submit, "#issues")
    assert len(p.all("#issues tbody tr")) == sum(1 for i in ui.traffic.issues if i["severity"] == "critical")
    p.check_accessible()
    p.shot("issues")
    p.submit(p.find("a[href='/ui/users']").click, "#users")
    assert browser.title == "Users and tokens · qtap"
    assert {"admin", "ed", "vi"} <= {r.find_element("css selector", "td").text for r in p.all("#users tbody tr")}
    # The add-user form from the keyboard alone: type, Tab to the next field, Enter submits.
    from selenium.webdriver.common.keys import Keys

    p.find("#u-name").send_keys("kb-user", Keys.TAB)
    assert browser.execute_script("return document.activeElement.id") == "u-role"
    p.submit(lambda: p.find("#u-password").send_keys("a long password 1", Keys.ENTER), "#users")
    assert "kb-user" in p.find("#users").text
    p.check_accessible()
    p.shot("users")

    browser.delete_all_cookies()
    v = Page(browser, ui.plane.url, "viewer")
    v.login("vi", "/ui/issues")
    assert v.all("a[href='/ui/users']") == []  # not in the viewer's nav
    assert v.all("#issues form, #issues button") == []  # the issues list has no controls to edit
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const csrf = document.querySelector('input[name=csrf]').value;
        fetch('/ui/users', {method: 'POST', credentials: 'same-origin',
              headers: {'Content-Type': 'application/x-www-form-urlencoded'},
              body: new URLSearchParams({csrf: csrf, name: 'sneaky', role: 'admin'})}).then(r => done(r.status));""")
    assert status == 403 and ui.plane.store.user_row("sneaky") is None
    v.go("/ui/users")
    assert browser.title == "Error 403 · qtap" and "admin" in v.find(".error").text
