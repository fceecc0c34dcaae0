"""Chart and graph geometry for server-rendered SVG (the templates draw it; no chart library, no script).

Everything here is numbers and short strings; the templates escape every label."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Series:
    name: str
    css: str  # class of the line (its colour lives in ui.css)
    values: list[float | None]  # None: no data in the bucket (the line breaks there)


@dataclass(frozen=True)
class LineChart:
    width: int
    height: int
    paths: list[tuple[str, str, str]]  # (name, css class, SVG path data)
    y_ticks: list[tuple[float, str]]  # (y, label)
    x_ticks: list[tuple[float, str]]  # (x, label)
    empty: bool


PAD_L, PAD_R, PAD_T, PAD_B = 56, 8, 8, 22


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return float(m * exp)
    return float(10 * exp)


def line_chart(xs: Sequence[int], series: Sequence[Series], fmt: str = "{:g}", x_labels: Sequence[str] = (),
               width: int = 560, height: int = 160) -> LineChart:
    """Lines over time buckets ``xs`` (epoch seconds), y from 0 to a round maximum, 4 grid lines."""
    w, h = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    top = _nice_max(max((v for s in series for v in s.values if v is not None), default=0.0))
    n = len(xs)

    def x(i: int) -> float:
        return PAD_L + (w * i / (n - 1) if n > 1 else w / 2)

    def y(v: float) -> float:
        return PAD_T + h - h * (v / top)

    paths = []
    for s in series:
        parts, pen_down = [], False
        for i, v in enumerate(s.values):
            if v is None:
                pen_down = False
                continue
            parts.append(f"{'L' if pen_down else 'M'}{x(i):.1f},{y(v):.1f}")
            pen_down = True
        paths.append((s.name, s.css, " ".join(parts)))
    y_ticks = [(y(top * k / 4), fmt.format(top * k / 4)) for k in range(5)]
    step = max(1, n // 6)
    # The last tick would run past the right edge: ticks stop one step before it.
    x_ticks = [(x(i), x_labels[i]) for i in range(0, max(n - step // 2, 1), step)] if x_labels else []
    return LineChart(width, height, paths, y_ticks, x_ticks, empty=n == 0)


@dataclass(frozen=True)
class Node:
    key: str
    label: str
    sub: str
    x: float
    y: float
    requests: int


@dataclass(frozen=True)
class EdgeShape:
    src: str
    dst: str
    path: str
    width: float
    css: str  # ok | warn | bad, by error rate
    label: str
    label_x: float
    label_y: float
    title: str


@dataclass(frozen=True)
class DependencyGraph:
    width: int
    height: int
    sources: list[Node]
    targets: list[Node]
    edges: list[EdgeShape]


def _short_exe(exe: str) -> str:
    return exe.rsplit("/", 1)[-1] or exe or "(unknown process)"


def dependency_graph(rows: Sequence[dict[str, object]], range_s: float, width: int = 960) -> DependencyGraph:
    """Two columns, processes/containers on the left and domains on the right, busiest first; one curve
    per edge, its width by request count (log scale), its colour by error rate, labelled req/s and errors."""
    by_src: dict[str, int] = {}
    by_dst: dict[str, int] = {}
    for r in rows:
        s = f"{r['exe']}\0{r['container_id']}"
        by_src[s] = by_src.get(s, 0) + int(str(r["requests"]))
        d = str(r["domain"]) or "(no domain)"
        by_dst[d] = by_dst.get(d, 0) + int(str(r["requests"]))
    row_h, top = 44, 24
    height = top + row_h * max(len(by_src), len(by_dst), 1) + 8
    left_x, right_x = 20.0, float(width - 300)

    def column(counts: dict[str, int], x: float, label: object) -> list[Node]:
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        out = []
        for i, (key, n) in enumerate(ordered):
            main, sub = label(key)  # type: ignore[operator]
            out.append(Node(key, main, sub, x, top + i * row_h + row_h / 2, n))
        return out

    def src_label(key: str) -> tuple[str, str]:
        exe, container = key.split("\0")
        return _short_exe(exe), (f"container {container[:12]}" if container else exe)

    sources = column(by_src, left_x, src_label)
    targets = column(by_dst, right_x, lambda k: (k, ""))
    pos_s = {n.key: n for n in sources}
    pos_t = {n.key: n for n in targets}
    most = max((int(str(r["requests"])) for r in rows), default=1)
    edges = []
    box_w = 260.0
    order = {n.key: i for i, n in enumerate(sources)}
    for r in rows:
        src = pos_s[f"{r['exe']}\0{r['container_id']}"]
        t = pos_t[str(r["domain"]) or "(no domain)"]
        n = int(str(r["requests"]))
        rate = float(str(r["error_rate"]))
        x1, x2 = src.x + box_w, t.x
        mid = (x1 + x2) / 2
        path = f"M{x1:.1f},{src.y:.1f} C{mid:.1f},{src.y:.1f} {mid:.1f},{t.y:.1f} {x2:.1f},{t.y:.1f}"
        css = "bad" if rate >= 0.05 else "warn" if rate > 0 else "ok"
        per_s = n / range_s if range_s > 0 else 0.0
        label = f"{per_s:.2f}/s · {rate * 100:.1f}% err"
        # Labels sit near the domain's end, where a domain's edges run flat side by side, each source's a bit
        # further back along its curve, so the labels of edges that meet at one domain do not pile up.
        k = max(0.3, 0.92 - 0.3 * order[src.key])
        ease = 3 * k * k - 2 * k * k * k  # the curve's y progress at parameter k (control points share y)
        lx = (1 - k) ** 3 * x1 + 3 * (1 - k) ** 2 * k * mid + 3 * (1 - k) * k * k * mid + k**3 * x2
        ly = src.y + (t.y - src.y) * ease - 5
        title = (f"{_short_exe(str(r['exe']))} -> {r['domain']}: {n} requests, {rate * 100:.2f}% errors, "
                 f"p95 {int(str(r['p95_ns'])) / 1e6:.1f} ms")
        edges.append(EdgeShape(src.key, t.key, path, 1.0 + 5.0 * math.log1p(n) / math.log1p(most), css, label,
                               lx, ly, title))
    return DependencyGraph(width, int(height), sources, targets, edges)
