"""The package's shape, read from the source (no import, no kernel): no import cycle among qtap_async's
modules, sans-IO parsers that reach no I/O, and no public class defined twice. One check imports for real,
in a fresh interpreter: what the agent loads, which must not include Pulse's server side.

The import graph holds what runs when a module is imported: module-level statements, including those in
module-level `if`/`try`/`with` blocks and class bodies, but not function bodies (a deferred import is the
usual way to break a cycle, and it runs later) and not `if TYPE_CHECKING:` blocks (never run).
"""

from __future__ import annotations

import ast
import functools
import itertools
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "qtap_async"

# Modules a sans-IO parser must not import, directly or through a qtap_async module it imports. A parser
# gets bytes and returns events; whoever drives it owns sockets, files, clocks, tasks and logs, so the same
# parser runs live, on a replay file, in a fuzzer and in a benchmark, and its output depends on its input
# alone.
FORBIDDEN_IN_PROTOCOLS: dict[str, str] = {
    "asyncio": "an event loop: the caller schedules, the parser only computes",
    "selectors": "waits on file descriptors",
    "select": "waits on file descriptors",
    "socket": "network I/O",
    "ssl": "network I/O (and TLS state a parser must only observe)",
    "http": "http.client/http.server do network I/O; parse the bytes instead",
    "urllib.request": "network I/O",
    "os": "files, processes and the environment",
    "pathlib": "the file system",
    "shutil": "the file system",
    "tempfile": "the file system",
    "glob": "the file system",
    "io.open": "files (io.BytesIO is fine: memory only)",
    "subprocess": "processes",
    "multiprocessing": "processes",
    "threading": "threads: a parser is driven from one place",
    "concurrent": "threads and processes",
    "signal": "process signals",
    "logging": "log output: a parser returns ParseError events and the caller decides what to log",
    "time": "a clock: timestamps come with the input, so a replay gives the same events",
    "datetime": "a clock (datetime.now)",
    "random": "output must depend on the input alone",
    "sys": "the interpreter's streams and state",
    "ctypes": "the kernel side lives in qtap_async.bpf",
}
# Builtins that do I/O: calling one anywhere in a parser's code (even inside a function) is I/O.
FORBIDDEN_CALLS: dict[str, str] = {
    "open": "files",
    "print": "output on stdout",
    "input": "reads stdin",
    "breakpoint": "a debugger",
}


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    is_package: bool
    imports: dict[str, int] = field(default_factory=dict)  # imported module -> first line


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


@functools.cache
def _load_modules() -> dict[str, Module]:
    mods: dict[str, Module] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        name, is_pkg = _module_name(path)
        mods[name] = Module(name, path, ast.parse(path.read_text(), str(path)), is_pkg)
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run when the module is imported: not function bodies, not TYPE_CHECKING blocks."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from _import_time_statements(stmt.body)
            yield from _import_time_statements(stmt.orelse)
        elif isinstance(stmt, ast.Try | ast.TryStar):
            yield from _import_time_statements(stmt.body)
            for handler in stmt.handlers:
                yield from _import_time_statements(handler.body)
            yield from _import_time_statements(stmt.orelse)
            yield from _import_time_statements(stmt.finalbody)
        elif isinstance(stmt, ast.With | ast.For | ast.While):
            yield from _import_time_statements(stmt.body)
            yield from _import_time_statements(stmt.orelse if not isinstance(stmt, ast.With) else [])
        elif isinstance(stmt, ast.ClassDef):
            yield from _import_time_statements(stmt.body)


def _imported_names(mod: Module, stmt: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """Every module a statement imports (absolute names); `from pkg import sub` names the submodule too."""
    if isinstance(stmt, ast.Import):
        return [alias.name for alias in stmt.names]
    if stmt.level:
        base_parts = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
        base_parts = base_parts[: len(base_parts) - (stmt.level - 1)]
        base = ".".join(base_parts + ([stmt.module] if stmt.module else []))
    else:
        base = stmt.module or ""
    # `from pkg import sub` where sub is a module is an import of pkg.sub; pkg itself counts only when a name
    # is taken from it (its __init__ runs either way, as it does for `import pkg.sub`: a parent package is
    # not an edge, else every re-exporting __init__ would make a cycle with its own submodules).
    subs = [f"{base}.{alias.name}" for alias in stmt.names if f"{base}.{alias.name}" in known]
    return subs if len(subs) == len(stmt.names) else [base, *subs]


def _build_graph(mods: dict[str, Module]) -> dict[str, set[str]]:
    known = set(mods)
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for mod in mods.values():
        for stmt in _import_time_statements(mod.tree.body):
            if not isinstance(stmt, ast.Import | ast.ImportFrom):
                continue
            for target in _imported_names(mod, stmt, known):
                mod.imports.setdefault(target, stmt.lineno)
                if target in known and target != mod.name:
                    graph[mod.name].add(target)
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is a few hundred nodes, but recursion depth is not ours)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as a path a -> b -> ... -> a."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [start]
                    while node != start:
                        path.append(node)
                        node = previous[node]
                    return [start, *reversed(path[1:]), start]
                if child not in previous:
                    previous[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"{component} is not a cycle")


def _describe_cycle(mods: dict[str, Module], cycle: list[str]) -> str:
    steps = [f"{a} (line {mods[a].imports[b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])


def _fake(name: str, source: str, is_package: bool = False) -> Module:
    return Module(name, ROOT / (name.replace(".", "/") + ".py"), ast.parse(source), is_package)


def test_import_graph_counts_what_runs_at_import() -> None:
    # The rules of the graph on a made-up package, so the cycle test cannot pass on a graph that misses edges.
    mods = {m.name: m for m in [
        _fake("p", "from p import a\nfrom p.b import NAME\n", is_package=True),
        _fake("p.a", "import p.b\nfrom . import c\nfrom typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from p import d\n"
                     "def later():\n    import p.e\n"
                     "try:\n    from p.f import x\nexcept ImportError:\n    pass\n"
                     "class K:\n    from p import g\n"
                     "from p import g, NAME\n"),
        _fake("p.b", ""), _fake("p.c", ""), _fake("p.d", ""), _fake("p.e", ""), _fake("p.f", ""), _fake("p.g", ""),
    ]}
    graph = _build_graph(mods)
    assert graph["p"] == {"p.a", "p.b"}
    # not d (TYPE_CHECKING) nor e (deferred); p because NAME is taken from it
    assert graph["p.a"] == {"p", "p.b", "p.c", "p.f", "p.g"}
    mods["p.a"].tree.body.pop()  # without `from p import g, NAME`, only submodules are taken from p
    mods["p.a"].imports.clear()
    assert _build_graph(mods)["p.a"] == {"p.b", "p.c", "p.f", "p.g"}
    # And on the real package, edges exist at all.
    real = _build_graph(_load_modules())
    assert len(real) > 100
    assert "qtap_async.buffers.channel" in real["qtap_async.sources.ringbuf"]


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _strongly_connected(graph) == [["a", "b", "c"]]
    assert _one_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycle() -> None:
    mods = _load_modules()
    graph = _build_graph(mods)
    cycles = [_describe_cycle(mods, _one_cycle(graph, c)) for c in _strongly_connected(graph)]
    assert not cycles, "import cycles among qtap_async modules (module-level imports):\n" + "\n".join(cycles)


def _reached_from(graph: dict[str, set[str]], roots: list[str]) -> dict[str, list[str]]:
    """Every qtap_async module the roots import at module level, with the import chain that reaches it."""
    chains: dict[str, list[str]] = {r: [r] for r in roots}
    frontier = list(roots)
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in chains:
                    chains[child] = [*chains[node], child]
                    nxt.append(child)
        frontier = nxt
    return chains


def _forbidden(imported: str) -> str | None:
    for name in FORBIDDEN_IN_PROTOCOLS:
        if imported == name or imported.startswith(name + "."):
            return name
    return None


def test_protocols_import_no_io() -> None:
    mods = _load_modules()
    graph = _build_graph(mods)
    protocols = sorted(m for m in mods if m == f"{PACKAGE}.protocols" or m.startswith(f"{PACKAGE}.protocols."))
    assert len(protocols) > 5
    # A parser's own deferred imports run when its functions do: they count as edges here.
    for name in protocols:
        for node in ast.walk(mods[name].tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name] |= {t for t in _imported_names(mods[name], node, set(mods)) if t in mods} - {name}
    problems: list[str] = []
    for name, chain in sorted(_reached_from(graph, protocols).items()):
        mod = mods[name]
        where = name if len(chain) == 1 else f"{name} (reached by {' -> '.join(chain)})"
        # In a parser's own files every statement counts; in the qtap_async modules it reaches, what runs
        # when they are imported.
        nodes = list(ast.walk(mod.tree)) if name in protocols else list(_import_time_statements(mod.tree.body))
        for node in nodes:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
                    problems.append(f"{where}: line {node.lineno} calls {node.func.id}() "
                                    f"({FORBIDDEN_CALLS[node.func.id]})")
                continue
            for target in targets:
                bad = _forbidden(target)
                if bad is not None:
                    problems.append(f"{where}: line {node.lineno} imports {target} ({FORBIDDEN_IN_PROTOCOLS[bad]})")
    assert not problems, "protocols/ reaches I/O:\n" + "\n".join(sorted(set(problems)))


def _public_classes(mod: Module) -> Iterator[tuple[str, int]]:
    for stmt in _top_level(mod.tree):
        if isinstance(stmt, ast.ClassDef) and not stmt.name.startswith("_"):
            yield stmt.name, stmt.lineno


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """Statements at module level, through if/try blocks but not into class or function bodies."""
    out: list[ast.stmt] = []
    todo = list(tree.body)
    while todo:
        stmt = todo.pop()
        out.append(stmt)
        if isinstance(stmt, ast.If | ast.With):
            todo += stmt.body + (stmt.orelse if isinstance(stmt, ast.If) else [])
        elif isinstance(stmt, ast.Try | ast.TryStar):
            todo += stmt.body + stmt.orelse + stmt.finalbody + [s for h in stmt.handlers for s in h.body]
    return out


def test_no_public_class_defined_twice() -> None:
    mods = _load_modules()
    where: dict[str, list[str]] = {}
    for mod in mods.values():
        for name, line in _public_classes(mod):
            where.setdefault(name, []).append(f"{mod.path.relative_to(ROOT)}:{line}")
    assert "Channel" in where  # the walk sees classes at all
    twice = {name: places for name, places in sorted(where.items()) if len(places) > 1}
    assert not twice, "public classes defined more than once:\n" + "\n".join(
        f"{name}: {', '.join(places)}" for name, places in twice.items())


# The agent's side: what `qtap run` (with or without a config) loads, the Pulse store included. The control
# client imports the agent and its config-driven runtime, wherever those live.
AGENT_SIDE = ["cli.main", "cli.run_cmd", "qtap_async.control_client", "qtap_async.sinks.factory",
              "qtap_async.sinks.pulse"]
# Pulse's server side and what only it needs: the agent must never load them (memory, start-up time, and a
# ClickHouse engine in a privileged process that has no use for one).
PULSE_SERVER_SIDE = ["qtap_async.pulse.ingest", "qtap_async.pulse.storage", "qtap_async.pulse.tokens",
                     "qtap_async.pulse.app", "qtap_async.pulse.queries", "qtap_async.pulse.kafka", "chdb"]

_AGENT_PROBE = """
import asyncio, importlib, json, sys
import httpx
for name in sys.argv[1].split(","):
    importlib.import_module(name)
from qtap_async.sinks.base import EventRecord
from qtap_async.sinks.pulse import PulseEventSink

seen = []
def answer(request):
    seen.append(request.headers.get("content-encoding"))
    return httpx.Response(200, json={"accepted": 1, "rejected": 0, "errors": []})

async def main():
    # A real batch through the sink and Pulse's client: the body is gzipped on this path.
    sink = PulseEventSink("https://pulse.test", "t", transport=httpx.MockTransport(answer))
    await sink.send([EventRecord(None, b'{"type":"request"}')])
    await sink.close()

asyncio.run(main())
loaded = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in sys.argv[2].split(",")))
sys.stdout.write(json.dumps({"loaded": loaded, "encodings": seen}))
"""


def test_the_agent_does_not_load_pulse_server_side() -> None:
    import json

    out = subprocess.run([sys.executable, "-c", _AGENT_PROBE, ",".join(AGENT_SIDE), ",".join(PULSE_SERVER_SIDE)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    assert result["encodings"] == ["gzip"]  # the probe did send a compressed batch
    assert result["loaded"] == []
