"""`qtap pulse query ...`: Pulse's query API from the command line (no curl with a bearer token).

A table on a terminal, JSON otherwise (``--json`` / ``--table`` to choose). The URL and token come
from ``--url``/``--token`` or ``QTAP_PULSE_URL``/``PULSE_TOKEN``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer

query_app = typer.Typer(help="Ask Pulse: top domains and endpoints, time series, processes, issues.",
                        no_args_is_help=True)

Url = Annotated[str | None, typer.Option("--url", metavar="URL",
                                         help="Pulse base URL [$QTAP_PULSE_URL, else http://127.0.0.1:8428]")]
Token = Annotated[str | None, typer.Option("--token", metavar="TOKEN",
                                           help="bearer token with the query scope [$PULSE_TOKEN]")]
Start = Annotated[str | None, typer.Option("--start", metavar="TIME", help="RFC 3339 or epoch ns (default: end-24h)")]
End = Annotated[str | None, typer.Option("--end", metavar="TIME", help="RFC 3339 or epoch ns (default: now)")]
Limit = Annotated[int | None, typer.Option("--limit", metavar="N", help="rows at most")]
Domain = Annotated[str | None, typer.Option("--domain", metavar="HOST", help="only this domain")]
AsJson = Annotated[bool | None, typer.Option("--json/--table", help="output (default: table on a terminal)")]


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"qtap pulse query: {msg}", err=True)
    raise typer.Exit(code)


def fetch(url: str | None, token: str | None, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one query; one-line errors for every failure a person can fix."""
    import httpx

    base = (url or os.environ.get("QTAP_PULSE_URL") or "http://127.0.0.1:8428").rstrip("/")
    secret = token or os.environ.get("PULSE_TOKEN")
    if not secret:
        _fail("no token: pass --token or set PULSE_TOKEN (create one with `qtap pulse token create`)", 2)
    query = {k: v for k, v in params.items() if v is not None}
    try:
        r = httpx.get(f"{base}{path}", params=query, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    except httpx.HTTPError as exc:
        _fail(f"{base} is not reachable: {exc}")
        raise  # unreachable: _fail raised
    if r.status_code in (401, 403):
        _fail(f"the token is refused ({r.status_code}): it needs the query scope of a live token")
    if r.status_code == 404:
        _fail(f"{base}{path} answers 404: is {base} a Pulse server?")
    if r.status_code >= 400:
        try:
            detail = r.json().get("error", r.text)
        except ValueError:
            detail = r.text
        _fail(f"{r.status_code}: {str(detail).strip()}", 2 if r.status_code == 422 else 1)
    body = r.json()
    rows = body.get("rows", body) if isinstance(body, dict) else body
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int) and key.endswith("_ns"):
        return f"{value / 1e6:.1f}ms"  # a duration (the table leaves out epoch-ns twins of a time)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    # A time is shown once, as the RFC 3339 text Pulse sends (ts, bucket_start); its epoch-ns twin
    # (ts_ns, bucket_start_ns) is for programs and stays in the JSON output only.
    keys = [k for k in rows[0] if not (k.endswith("_ns") and k.removesuffix("_ns") in rows[0])]
    cells = [[_cell(k, row.get(k)) for k in keys] for row in rows]
    heads = [k.removesuffix("_ns").upper() for k in keys]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def show(rows: list[dict[str, Any]], as_json: bool | None) -> None:
    if as_json is None:
        as_json = not sys.stdout.isatty()
    if as_json:
        typer.echo(json.dumps(rows))
    else:
        typer.echo(table(rows))


@query_app.command("top-domains")
def top_domains(url: Url = None, token: Token = None, start: Start = None, end: End = None, limit: Limit = None,
                domain: Domain = None, direction: Annotated[str | None, typer.Option(metavar="DIRECTION")] = None,
                as_json: AsJson = None) -> None:
    """Requests, errors and latency percentiles per domain."""
    show(fetch(url, token, "/v1/query/top/domains",
               {"start": start, "end": end, "limit": limit, "domain": domain, "direction": direction}), as_json)


@query_app.command("top-endpoints")
def top_endpoints(url: Url = None, token: Token = None, start: Start = None, end: End = None, limit: Limit = None,
                  domain: Domain = None, direction: Annotated[str | None, typer.Option(metavar="DIRECTION")] = None,
                  as_json: AsJson = None) -> None:
    """The same per (domain, method, path template)."""
    show(fetch(url, token, "/v1/query/top/endpoints",
               {"start": start, "end": end, "limit": limit, "domain": domain, "direction": direction}), as_json)


@query_app.command("timeseries")
def timeseries(url: Url = None, token: Token = None, start: Start = None, end: End = None, domain: Domain = None,
               bucket: Annotated[int | None, typer.Option(metavar="SECONDS", help="bucket width")] = None,
               path: Annotated[str | None, typer.Option(metavar="PATH", help="only this path")] = None,
               method: Annotated[str | None, typer.Option(metavar="METHOD")] = None,
               pid: Annotated[int | None, typer.Option(metavar="PID", help="only this process")] = None,
               exe: Annotated[str | None, typer.Option(metavar="PATH", help="only this executable")] = None,
               as_json: AsJson = None) -> None:
    """Requests, errors and latency per time bucket."""
    show(fetch(url, token, "/v1/query/timeseries", {"start": start, "end": end, "domain": domain, "bucket": bucket,
                                                     "path": path, "method": method, "pid": pid, "exe": exe}),
         as_json)


@query_app.command("processes")
def processes(url: Url = None, token: Token = None, start: Start = None, end: End = None, limit: Limit = None,
              domain: Domain = None,
              group_by: Annotated[str | None, typer.Option(metavar="process|container")] = None,
              as_json: AsJson = None) -> None:
    """The same per process or per container."""
    show(fetch(url, token, "/v1/query/processes",
               {"start": start, "end": end, "limit": limit, "domain": domain, "group_by": group_by}), as_json)


@query_app.command("issues")
def issues(url: Url = None, token: Token = None, start: Start = None, end: End = None, limit: Limit = None,
           rule: Annotated[str | None, typer.Option(metavar="RULE")] = None,
           severity: Annotated[str | None, typer.Option(metavar="SEVERITY")] = None,
           as_json: AsJson = None) -> None:
    """Issues (detect_errors), newest first."""
    show(fetch(url, token, "/v1/query/issues",
               {"start": start, "end": end, "limit": limit, "rule": rule, "severity": severity}), as_json)
