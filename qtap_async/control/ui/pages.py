"""The pages under /ui and the one JSON call the payload viewer makes (its presigned URL).

Each page authenticates like the API (session cookie or bearer token), is confined to one team and needs a
role: viewers read every page, editors create and activate configs. Forms carry the session's CSRF token in
a hidden field, checked like the API's X-CSRF-Token header. Every answer has a Content-Security-Policy
without inline scripts or styles, and refuses framing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import jinja2
import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from qtap_async.control.auth import Principal, hash_password
from qtap_async.control.configs import InvalidConfig, check_config, diff
from qtap_async.control.http import ApiError, Query, read_body
from qtap_async.control.models import ROLE_RANK, Issue, UserIn
from qtap_async.control.routes_auth import password_login
from qtap_async.control.routes_configs import activate_version, store_config
from qtap_async.control.service import Control
from qtap_async.control.ui import svg
from qtap_async.control.ui.payloads import NotFetchable, PayloadSigner
from qtap_async.control.ui.pulse import PulseReader, PulseUnavailable
from qtap_async.errors import ControlAuthError, ControlError
from qtap_async.telemetry.metrics import (
    CONTROL_AUTH_FAILURES,
    CONTROL_CONFIGS_REJECTED,
    CONTROL_HTTP_REQUESTS,
    CONTROL_UI_PAYLOAD_URLS,
)

HERE = Path(__file__).parent
RANGES: dict[str, int] = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
_SAFE_NEXT = re.compile(r"^/ui(/[A-Za-z0-9/_.~-]{0,200})?$")
_GROUP = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})?$")
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
NS = 10**9
HOUR_NS = 3600 * NS
ALIGN_FROM_S = 6 * 3600  # ranges at least this long start on a whole hour (see _range)

NAV = [("dashboard", "/ui/", "Dashboard"), ("traffic", "/ui/traffic", "Traffic"), ("map", "/ui/map", "Dependency map"),
       ("issues", "/ui/issues", "Issues"), ("fleet", "/ui/fleet", "Fleet"), ("configs", "/ui/configs", "Configs"),
       ("audit", "/ui/audit", "Audit log")]
ADMIN_NAV = [("users", "/ui/users", "Users and tokens")]  # shown to the team's admins only
SEVERITIES = ("info", "warning", "error", "critical")


def _fmt_ts_ns(ns: Any) -> str:
    return datetime.fromtimestamp(int(ns) / NS, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _fmt_ts_s(s: Any) -> str:
    return "never" if s is None else datetime.fromtimestamp(float(s), UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_ms(ns: Any) -> str:
    ms = int(ns) / 1e6
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _fmt_pct(x: Any) -> str:
    return f"{float(x) * 100:.2f}%"


def _fmt_bytes(n: Any) -> str:
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} GiB"


def _ago(s: Any) -> str:
    if s is None:
        return "never"
    d = max(0.0, time.time() - float(s))
    return f"{d:.0f} s ago" if d < 120 else f"{d / 60:.0f} min ago" if d < 7200 else f"{d / 3600:.1f} h ago"


@dataclass
class Ctx:
    request: Request
    principal: Principal
    team: str
    form: dict[str, str] = field(default_factory=dict)

    @property
    def query(self) -> Query:
        return Query(self.request)


Handler = Callable[[Ctx], Awaitable[Response]]


class UiApp:
    def __init__(self, control: Control) -> None:
        self.control = control
        self.settings = control.settings
        self.pulse = PulseReader(control.settings)
        self.signer = PayloadSigner(control.settings.ui.payloads)
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                      undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(ts_ns=_fmt_ts_ns, ts_s=_fmt_ts_s, ms=_fmt_ms, pct=_fmt_pct, bytes=_fmt_bytes,
                                ago=_ago)

    async def aclose(self) -> None:
        await self.pulse.aclose()

    # -- plumbing ---------------------------------------------------------------------------------
    def headers(self, connect: str = "") -> dict[str, str]:
        csp = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               f"connect-src 'self'{' ' + connect if connect else ''}; form-action 'self'; "
               "frame-ancestors 'none'; base-uri 'none'")
        # no-referrer: a presigned URL fetched from this page must not tell the store which page asked.
        return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}

    def html(self, name: str, status: int = 200, connect: str = "", **context: Any) -> Response:
        body = self.env.get_template(name).render(**context)
        return HTMLResponse(body, status, headers=self.headers(connect))

    def render(self, ctx: Ctx, name: str, active: str, status: int = 200, connect: str = "",
               **context: Any) -> Response:
        p = ctx.principal
        nav = NAV + ADMIN_NAV if p.can(ctx.team, "admin") else NAV
        return self.html(name, status, connect, nav=nav, active=active, user=p.name, team=ctx.team,
                         teams=sorted(p.roles), role=p.role_in(ctx.team) or "", csrf=p.csrf,
                         can_edit=p.can(ctx.team, "editor"), session=p.kind == "session", **context)

    def error_page(self, status: int, message: str) -> Response:
        return self.html("error.html", status, code=status, message=message)

    async def _form(self, request: Request) -> dict[str, str]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise ApiError(415, "forms are sent as application/x-www-form-urlencoded")
        body = await read_body(request, self.settings.limits)
        try:
            parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                              max_num_fields=100)
        except (UnicodeDecodeError, ValueError) as e:
            raise ApiError(400, f"malformed form: {e}") from None
        return {k: v[0] for k, v in parsed.items()}

    def page(self, fn: Handler, role: str = "viewer", write: bool = False) -> Callable[[Request], Awaitable[Response]]:
        control = self.control

        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                principal = control.principal(request)
                if principal.kind == "agent":
                    raise ControlAuthError("an agent identity cannot use the web UI", 403)
            except ControlAuthError as e:
                if e.status == 401:
                    target = request.url.path if request.method == "GET" else "/ui/"
                    nxt = target if _SAFE_NEXT.match(target) else "/ui/"
                    return RedirectResponse(f"/ui/login?next={quote(nxt)}", 303, headers=self.headers())
                return self.error_page(e.status, str(e))
            try:
                team = control.team_for(request, principal, role)
                form: dict[str, str] = {}
                if write:
                    form = await self._form(request)
                    control.auth.check_csrf(principal, form.get("csrf"))
                response = await fn(Ctx(request, principal, team, form))
            except ControlAuthError as e:
                control.metrics.inc(CONTROL_AUTH_FAILURES, status=str(e.status))
                response = self.error_page(e.status, str(e))
            except ApiError as e:
                response = self.error_page(e.status, e.message)
            except ControlError:
                response = self.error_page(503, "the store is unavailable; retry later")
            control.metrics.inc(CONTROL_HTTP_REQUESTS, route=f"ui:{fn.__name__}",
                                status=str(response.status_code))
            # The page's server time (Pulse queries included), for the browser's devtools and the benchmark.
            response.headers["server-timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.1f}"
            return response

        endpoint.__name__ = fn.__name__
        return endpoint

    def routes(self) -> list[BaseRoute]:
        p = self.page
        return [
            Route("/", self.root),
            Mount("/ui", routes=[
                Route("/login", self.login_form, methods=["GET"]),
                Route("/login", self.login, methods=["POST"]),
                Route("/logout", p(self.logout, role="viewer", write=True), methods=["POST"]),
                Route("/", p(self.dashboard)),
                Route("/traffic", p(self.traffic)),
                Route("/traffic/{id}", p(self.request_detail)),
                Route("/traffic/{id}/objects/{obj}/url", p(self.object_url)),
                Route("/map", p(self.dependency_map)),
                Route("/fleet", p(self.fleet)),
                Route("/fleet/{agent_id}", p(self.agent)),
                Route("/configs", p(self.configs)),
                Route("/configs/new", p(self.config_editor, role="editor")),
                Route("/configs/new", p(self.config_create, role="editor", write=True), methods=["POST"]),
                Route("/configs/rollback", p(self.config_rollback, role="editor", write=True), methods=["POST"]),
                Route("/configs/{version:int}", p(self.config_detail)),
                Route("/configs/{version:int}/activate", p(self.config_activate, role="editor", write=True),
                      methods=["POST"]),
                Route("/audit", p(self.audit)),
                Route("/issues", p(self.issues)),
                Route("/users", p(self.users, role="admin")),
                Route("/users", p(self.user_add, role="admin", write=True), methods=["POST"]),
                Route("/users/{name}/remove", p(self.user_remove, role="admin", write=True), methods=["POST"]),
                Route("/tokens/{token_id}/revoke", p(self.token_revoke, role="admin", write=True),
                      methods=["POST"]),
                Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
            ]),
        ]

    async def root(self, request: Request) -> Response:
        return RedirectResponse("/ui/", 302)

    # -- login ------------------------------------------------------------------------------------
    def _next(self, value: str) -> str:
        return value if _SAFE_NEXT.match(value) else "/ui/"

    async def login_form(self, request: Request) -> Response:
        nxt = self._next(request.query_params.get("next", "/ui/"))
        return self.html("login.html", next=nxt, error="", username="", sso=self.control.oidc is not None)

    async def login(self, request: Request) -> Response:
        # No session yet, so no CSRF token: a cross-site login form is refused by its Origin instead.
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
            return self.error_page(403, "login form posted from another site")
        try:
            form = await self._form(request)
        except ApiError as e:
            return self.error_page(e.status, e.message)
        nxt = self._next(form.get("next", "/ui/"))
        username, password = form.get("username", ""), form.get("password", "")
        sso = self.control.oidc is not None
        if not username or not password or len(username) > 128:
            return self.html("login.html", 422, next=nxt, error="enter your user name and password",
                             username=username[:128], sso=sso)
        try:
            cookie, _p = await password_login(self.control, request, username, password)
        except ControlAuthError as e:
            return self.html("login.html", e.status, next=nxt, error=str(e), username=username, sso=sso)
        except ApiError as e:
            return self.html("login.html", e.status, next=nxt, error=e.message, username=username, sso=sso)
        response = RedirectResponse(nxt, 303, headers=self.headers())
        response.headers["set-cookie"] = self.control.auth.cookie_header(cookie, int(self.settings.session_ttl_s))
        return response

    async def logout(self, ctx: Ctx) -> Response:
        p = ctx.principal
        if p.kind == "session":
            self.control.store.delete_session(p.session_hash)
            for team in sorted(p.roles) or [""]:
                self.control.audit(ctx.request, p.name, team, "logout", p.name)
        response = RedirectResponse("/ui/login", 303, headers=self.headers())
        response.headers["set-cookie"] = self.control.auth.cookie_header("", 0)
        return response

    # -- time ranges ------------------------------------------------------------------------------
    def _range(self, ctx: Ctx) -> tuple[str, int, int]:
        key = ctx.query.text("range", "24h", max_length=8)
        if key not in RANGES:
            raise ApiError(422, f"range must be one of {', '.join(RANGES)}")
        end = time.time_ns()
        start = end - RANGES[key] * NS
        if RANGES[key] >= ALIGN_FROM_S:
            # Pulse keeps hourly rollups: a window that starts on a whole hour reads its first hour from
            # the rollup instead of scanning that hour's raw rows (docs/pulse.md, "Rollups"). It is up to
            # an hour longer than its name, and the page says where it starts.
            start = start // HOUR_NS * HOUR_NS
        return key, start, end

    @staticmethod
    def _since(start: int) -> str:
        return datetime.fromtimestamp(start // NS, UTC).strftime("%Y-%m-%d %H:%M UTC")

    # -- dashboard --------------------------------------------------------------------------------
    async def dashboard(self, ctx: Ctx) -> Response:
        key, start, end = self._range(ctx)
        span_s = RANGES[key]
        bucket = max(10, span_s // 60)
        try:
            # One pass over the range in Pulse (the six views share one FINAL scan).
            rows = await self.pulse.query("dashboard", start=start, end=end, bucket=bucket, limit=10)
        except PulseUnavailable as e:
            return self.render(ctx, "dashboard.html", "dashboard", range=key, ranges=RANGES, pulse_error=str(e),
                               since=self._since(start), total=None, charts={}, domains=[], endpoints=[], procs=[],
                               containers=[])
        part: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            part.setdefault(row["set"], []).append(row)
        summary, series = part.get("total", []), part.get("bucket", [])
        domains, endpoints = part.get("domain", []), part.get("endpoint", [])
        procs, containers = part.get("process", []), part.get("container", [])
        # Buckets without requests are absent from Pulse's answer: the request rate is 0 there, while error
        # rate and latency have no value (their lines break instead of dropping to a made-up 0).
        first = start // NS // bucket * bucket
        slots = list(range(first, end // NS + 1, bucket))
        by = {int(r["bucket_start_ns"]) // NS: r for r in series}
        filled = [by.get(s) for s in slots]
        labels = [datetime.fromtimestamp(s, UTC).strftime("%H:%M" if span_s <= 86400 else "%m-%d %H:%M")
                  for s in slots]

        def values(f: Callable[[dict[str, Any]], float]) -> list[float | None]:
            return [f(r) if r is not None else None for r in filled]

        rate: list[float | None] = [r["requests"] / bucket if r is not None else 0.0 for r in filled]
        charts = {
            "rate": svg.line_chart(slots, [svg.Series("requests/s", "s1", rate)], "{:.3g}", labels),
            "errors": svg.line_chart(slots, [svg.Series("error rate %", "s3",
                                                        values(lambda r: r["error_rate"] * 100))], "{:.3g}%", labels),
            "latency": svg.line_chart(slots, [svg.Series(n, c, values(lambda r, f=f: r[f] / 1e6))  # type: ignore[misc]
                                              for n, c, f in (("p50", "s1", "p50_ns"), ("p95", "s2", "p95_ns"),
                                                              ("p99", "s3", "p99_ns"))], "{:.3g} ms", labels),
        }
        total = summary[0] if summary else None
        return self.render(ctx, "dashboard.html", "dashboard", range=key, ranges=RANGES, pulse_error="",
                           since=self._since(start), total=total, span_s=(end - start) / NS, charts=charts,
                           domains=domains, endpoints=endpoints,
                           procs=procs, containers=containers)

    # -- traffic explorer -------------------------------------------------------------------------
    async def traffic(self, ctx: Ctx) -> Response:
        q = ctx.query
        key, start, end = self._range(ctx)
        filters = {name: q.text(name, "", max_length=256).strip()
                   for name in ("domain", "method", "status", "exe", "container", "direction", "q")}
        if filters["status"] and filters["status"] not in STATUS_CLASSES:
            raise ApiError(422, f"status must be one of {', '.join(STATUS_CLASSES)}")
        if filters["direction"] and filters["direction"] not in ("ingress", "egress"):
            raise ApiError(422, "direction must be ingress or egress")
        page = q.integer("page", 0, 0, 1000)
        size = self.settings.ui.page_size
        rows: list[dict[str, Any]] = []
        error = ""
        try:
            rows = await self.pulse.query(
                "requests", start=start, end=end, limit=size + 1, offset=page * size, domain=filters["domain"],
                method=filters["method"].upper(), status_class=filters["status"], exe=filters["exe"],
                container_id=filters["container"], direction=filters["direction"], q=filters["q"])
        except PulseUnavailable as e:
            error = str(e)
        has_next = len(rows) > size
        base = {k: v for k, v in {"range": key, **filters}.items() if v}

        def link(n: int) -> str:
            return "/ui/traffic?" + urlencode({**base, "page": n})

        return self.render(ctx, "traffic.html", "traffic", range=key, ranges=RANGES, f=filters,
                           statuses=STATUS_CLASSES, rows=rows[:size], page=page, pulse_error=error,
                           next_link=link(page + 1) if has_next else "", prev_link=link(page - 1) if page else "",
                           filtered=any(filters.values()))

    def _request_window(self, ctx: Ctx) -> tuple[str, int]:
        rid = str(ctx.request.path_params["id"])
        if not _ID.match(rid):
            raise ApiError(404, f"no request {rid!r}")
        raw = ctx.query.text("ts", "", max_length=19)
        if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) < 2**63:
            raise ApiError(422, "query parameter 'ts' (the request's time, epoch ns) is required")
        return rid, int(raw)

    async def _request_and_objects(self, rid: str, ts: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        rows = await self.pulse.query("requests", start=ts - NS, end=ts + NS, id=rid, limit=1)
        if not rows:
            raise ApiError(404, f"no request {rid!r} at that time")
        # report_usage names a request "<transaction id>-req"; http_capture's objects carry the transaction id.
        tx = rid.removesuffix("-req")
        objects = await self.pulse.query(f"transactions/{quote(tx, safe='')}/objects")
        return rows[0], objects

    async def request_detail(self, ctx: Ctx) -> Response:
        rid, ts = self._request_window(ctx)
        try:
            row, objects = await self._request_and_objects(rid, ts)
        except PulseUnavailable as e:
            return self.render(ctx, "request.html", "traffic", 503, pulse_error=str(e), r=None, objects=[])
        shown = []
        origins: set[str] = set()
        for o in objects:
            entry = {**o, "fetchable": True, "why": "", "scheme": urlsplit(o["url"]).scheme or "file"}
            try:
                origin = urlsplit(self.signer.browser_url(o["url"]))
                origins.add(f"{origin.scheme}://{origin.netloc}")
            except NotFetchable as e:
                entry["fetchable"], entry["why"] = False, str(e)
            shown.append(entry)
        return self.render(ctx, "request.html", "traffic", connect=" ".join(sorted(origins)), pulse_error="",
                           r=row, objects=shown, max_bytes=self.settings.ui.payloads.max_display_bytes)

    async def object_url(self, ctx: Ctx) -> Response:
        """The URL the browser fetches the object from (JSON, never cached). The object's bytes do not pass here."""
        rid, ts = self._request_window(ctx)
        obj = str(ctx.request.path_params["obj"])
        try:
            _row, objects = await self._request_and_objects(rid, ts)
        except PulseUnavailable as e:
            return JSONResponse({"error": str(e)}, 503, headers=self.headers())
        match = next((o for o in objects if o["id"] == obj), None)
        if match is None:
            return JSONResponse({"error": f"no object {obj!r} for this request"}, 404, headers=self.headers())
        try:
            url = self.signer.browser_url(match["url"])
        except NotFetchable as e:
            return JSONResponse({"error": str(e)}, 409, headers=self.headers())
        self.control.metrics.inc(CONTROL_UI_PAYLOAD_URLS)
        return JSONResponse({"url": url, "size": match["size"], "content_type": match["content_type"],
                             "max_bytes": self.settings.ui.payloads.max_display_bytes}, headers=self.headers())

    # -- dependency map ---------------------------------------------------------------------------
    async def dependency_map(self, ctx: Ctx) -> Response:
        key, start, end = self._range(ctx)
        direction = ctx.query.text("direction", "", max_length=8)
        if direction not in ("", "ingress", "egress"):
            raise ApiError(422, "direction must be ingress or egress")
        try:
            rows = await self.pulse.query("edges", start=start, end=end, limit=200, direction=direction)
        except PulseUnavailable as e:
            return self.render(ctx, "map.html", "map", range=key, ranges=RANGES, direction=direction,
                               pulse_error=str(e), since=self._since(start), graph=None, rows=[])
        graph = svg.dependency_graph(rows, (end - start) / NS) if rows else None
        return self.render(ctx, "map.html", "map", range=key, ranges=RANGES, direction=direction, pulse_error="",
                           since=self._since(start), graph=graph, rows=rows,
                           span_s=(end - start) / NS)  # rates over the window shown

    # -- fleet ------------------------------------------------------------------------------------
    async def fleet(self, ctx: Ctx) -> Response:
        agents = self.control.store.list_agents(ctx.team, self.settings.stale_after_s)
        active = {a.group: a.version for a in self.control.store.activations(ctx.team)}
        return self.render(ctx, "fleet.html", "fleet", agents=agents, active_versions=active,
                           drops={a.id: _drops(a.counters) for a in agents})

    async def agent(self, ctx: Ctx) -> Response:
        agent_id = str(ctx.request.path_params["agent_id"])
        if not 0 < len(agent_id) <= 64:
            raise ApiError(404, f"no agent {agent_id!r}")
        rows = self.control.store.list_agents(ctx.team, self.settings.stale_after_s, agent_id)
        if not rows:
            raise ApiError(404, f"no agent {agent_id!r} in team {ctx.team!r}")
        a = rows[0]
        return self.render(ctx, "agent.html", "fleet", a=a, drops=_drops(a.counters),
                           counters=sorted(a.counters.items()))

    # -- configs ----------------------------------------------------------------------------------
    async def configs(self, ctx: Ctx) -> Response:
        store = self.control.store
        return self.render(ctx, "configs.html", "configs", versions=store.list_configs(ctx.team, 200, 0),
                           activations=store.activations(ctx.team))

    async def config_detail(self, ctx: Ctx) -> Response:
        version = int(ctx.request.path_params["version"])
        row = self.control.store.config(ctx.team, version)
        if row is None:
            raise ApiError(404, f"no config version {version} in team {ctx.team!r}")
        text, sha, by, at, comment, active = row
        against = ctx.query.integer("against", max(version - 1, 0), 0, 10**12)
        old = self.control.store.config(ctx.team, against) if against else None
        return self.render(ctx, "config.html", "configs", version=version, text=text, sha=sha, by=by, at=at,
                           comment=comment, active_for=active, against=against if old else 0,
                           diff=diff(old[0] if old else "", text, f"v{against}" if old else "empty", f"v{version}"),
                           lines=text.splitlines())

    def _editor(self, ctx: Ctx, text: str, status: int = 200, issues: list[Issue] | None = None,
                comment: str = "", group: str = "", activate: bool = False) -> Response:
        bad_lines = {i.line for i in issues or [] if i.line}
        lines = [(n, line, n in bad_lines) for n, line in enumerate(text.splitlines(), 1)]
        return self.render(ctx, "config_new.html", "configs", status, text=text, issues=issues or [], lines=lines,
                           by_line={i.line: i for i in issues or [] if i.line}, comment=comment, group=group,
                           activate=activate)

    async def config_editor(self, ctx: Ctx) -> Response:
        latest = self.control.store.list_configs(ctx.team, 1, 0)
        row = self.control.store.config(ctx.team, latest[0].version) if latest else None
        return self._editor(ctx, row[0] if row else "version: 2\n")

    async def config_create(self, ctx: Ctx) -> Response:
        text = ctx.form.get("yaml", "").replace("\r\n", "\n")
        comment = ctx.form.get("comment", "")[:200]
        group = ctx.form.get("group", "")
        activate = ctx.form.get("activate") == "on"
        if not _GROUP.match(group):
            return self._editor(ctx, text, 422, [Issue(path="group", message="letters, digits, '.', '_' or '-'")],
                                comment, group, activate)
        try:
            checked = await self.control.blocking(check_config, text, self.settings.limits.max_yaml_depth)
        except InvalidConfig as e:
            self.control.metrics.inc(CONTROL_CONFIGS_REJECTED)
            return self._editor(ctx, text, 422, e.issues, comment, group, activate)
        version = store_config(self.control, ctx.request, ctx.principal, ctx.team, checked, comment)
        if activate:
            activate_version(self.control, ctx.request, ctx.principal, ctx.team, group, version, "config.activate")
        return RedirectResponse(f"/ui/configs/{version}", 303, headers=self.headers())

    async def config_activate(self, ctx: Ctx) -> Response:
        version = int(ctx.request.path_params["version"])
        group = ctx.form.get("group", "")
        if not _GROUP.match(group):
            raise ApiError(422, "group: letters, digits, '.', '_' or '-'")
        if self.control.store.config(ctx.team, version) is None:
            raise ApiError(404, f"no config version {version} in team {ctx.team!r}")
        activate_version(self.control, ctx.request, ctx.principal, ctx.team, group, version, "config.activate")
        return RedirectResponse("/ui/configs", 303, headers=self.headers())

    async def config_rollback(self, ctx: Ctx) -> Response:
        group = ctx.form.get("group", "")
        if not _GROUP.match(group):
            raise ApiError(422, "group: letters, digits, '.', '_' or '-'")
        target = self.control.store.previous_activation(ctx.team, group)
        if target is None:
            raise ApiError(409, f"nothing to roll back to for group {group!r}")
        activate_version(self.control, ctx.request, ctx.principal, ctx.team, group, target, "config.rollback")
        return RedirectResponse("/ui/configs", 303, headers=self.headers())

    # -- audit ------------------------------------------------------------------------------------
    async def audit(self, ctx: Ctx) -> Response:
        q = ctx.query
        action, actor = q.text("action", "", max_length=64), q.text("actor", "", max_length=128)
        hours = q.integer("hours", 0, 0, 24 * 365)
        page = q.integer("page", 0, 0, 10_000)
        size = self.settings.ui.page_size
        rows = self.control.store.query_audit(ctx.team, action=action or None, actor=actor or None,
                                              since=time.time() - hours * 3600 if hours else None,
                                              limit=size + 1, offset=page * size)
        base = {k: v for k, v in {"action": action, "actor": actor, "hours": hours or ""}.items() if v}
        return self.render(ctx, "audit.html", "audit", rows=rows[:size], action=action, actor=actor, hours=hours,
                           next_link="/ui/audit?" + urlencode({**base, "page": page + 1}) if len(rows) > size else "",
                           prev_link="/ui/audit?" + urlencode({**base, "page": page - 1}) if page else "")

    # -- issues -----------------------------------------------------------------------------------
    async def issues(self, ctx: Ctx) -> Response:
        """What the agents' detect_errors rules flagged (Pulse's issue events), newest first."""
        q = ctx.query
        key, start, end = self._range(ctx)
        rule = q.text("rule", "", max_length=128).strip()
        severity = q.text("severity", "", max_length=16).strip()
        page = q.integer("page", 0, 0, 1000)
        size = self.settings.ui.page_size
        rows: list[dict[str, Any]] = []
        error = ""
        try:
            rows = await self.pulse.query("issues", start=start, end=end, limit=size + 1, offset=page * size,
                                          rule=rule, severity=severity)
        except PulseUnavailable as e:
            error = str(e)
        base = {k: v for k, v in {"range": key, "rule": rule, "severity": severity}.items() if v}

        def link(n: int) -> str:
            return "/ui/issues?" + urlencode({**base, "page": n})

        return self.render(ctx, "issues.html", "issues", range=key, ranges=RANGES, rule=rule, severity=severity,
                           severities=SEVERITIES, rows=rows[:size], pulse_error=error,
                           next_link=link(page + 1) if len(rows) > size else "",
                           prev_link=link(page - 1) if page else "", filtered=bool(rule or severity))

    # -- users and tokens (admins) ----------------------------------------------------------------
    def _users_page(self, ctx: Ctx, status: int = 200, error: str = "", name: str = "",
                    role: str = "viewer") -> Response:
        store = self.control.store
        users = store.list_users(ctx.team)
        tokens = store.list_api_tokens(store.user_ids_in_team(ctx.team))
        return self.render(ctx, "users.html", "users", status, users=users, tokens=tokens, error=error,
                           new_name=name, new_role=role, roles=("viewer", "editor", "admin"))

    async def users(self, ctx: Ctx) -> Response:
        return self._users_page(ctx)

    async def user_add(self, ctx: Ctx) -> Response:
        """Add a user to the team, as POST /v1/users does: a new local account (with a password) or an
        existing one (without: its password is its owner's)."""
        name, role = ctx.form.get("name", "").strip(), ctx.form.get("role", "viewer")
        password = ctx.form.get("password", "")
        try:
            body = msgspec.convert({"name": name, "role": role, "password": password or None}, UserIn)
        except msgspec.ValidationError as e:
            return self._users_page(ctx, 422, f"{e}", name[:64], role if role in ROLE_RANK else "viewer")
        store = self.control.store
        row = store.user_row(body.name)
        if row is None:
            pw = await self.control.blocking(hash_password, body.password) if body.password else None
            uid = store.create_user(body.name, "local", pw)
        elif store.memberships(row[0]).get(ctx.team):
            return self._users_page(ctx, 409, f"{body.name} is already in team {ctx.team}", body.name, body.role)
        elif body.password:
            return self._users_page(ctx, 409, f"{body.name} exists; add them without a password", body.name,
                                    body.role)
        else:
            uid = row[0]
        store.set_membership(uid, ctx.team, body.role)
        self.control.audit(ctx.request, ctx.principal.actor, ctx.team, "user.create", body.name, role=body.role,
                           password=bool(body.password))
        return RedirectResponse("/ui/users", 303, headers=self.headers())

    async def user_remove(self, ctx: Ctx) -> Response:
        name = str(ctx.request.path_params["name"])
        if name == ctx.principal.name:
            raise ApiError(409, "you cannot remove yourself; another admin can")
        store = self.control.store
        row = store.user_row(name) if 0 < len(name) <= 64 else None
        if row is None or not store.remove_membership(row[0], ctx.team):
            raise ApiError(404, f"no user {name!r} in team {ctx.team!r}")
        store.delete_user_sessions(row[0])
        if not store.memberships(row[0]):
            store.set_disabled(row[0], True)
        self.control.audit(ctx.request, ctx.principal.actor, ctx.team, "user.remove", name)
        return RedirectResponse("/ui/users", 303, headers=self.headers())

    async def token_revoke(self, ctx: Ctx) -> Response:
        token_id = str(ctx.request.path_params["token_id"])
        store = self.control.store
        owner = store.api_token_owner(token_id) if 0 < len(token_id) <= 64 else None
        # The team's admins revoke the tokens of the team's users, like DELETE /v1/tokens/{id}.
        if owner is None or ctx.team not in store.memberships(owner):
            raise ApiError(404, f"no token {token_id!r} in team {ctx.team!r}")
        if not store.revoke_api_token(token_id):
            raise ApiError(409, f"token {token_id!r} is already revoked")
        owner_name = store.user_name(owner) or ""
        for team in sorted(store.memberships(owner)):
            self.control.audit(ctx.request, ctx.principal.actor, team, "token.revoke", token_id, owner=owner_name)
        return RedirectResponse("/ui/users", 303, headers=self.headers())


def _drops(counters: dict[str, int]) -> int:
    return sum(v for k, v in counters.items() if "drop" in k or "lost" in k)
