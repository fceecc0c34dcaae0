"""The project's furniture: links that resolve inside the repository, a LICENSE matching pyproject, a
changelog, and a README transcript that matches what the CLI prints today."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from cli.formats import console_line
from cli.run_cmd import summary_line

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    out = set()
    for head in re.findall(r"^#+ (.+)$", page.read_text(), re.M):
        out.add(re.sub(r"[^a-z0-9 -]", "", head.lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(page: Path) -> None:
    text = page.read_text()
    assert "/work/" not in text and "../shared" not in text
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target} does not resolve"
        assert ROOT in dest.parents or dest == ROOT, f"{page.name}: {target} leaves the repository"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: no heading for #{anchor} in {dest.name}"


def test_license_matches_pyproject() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"]["text"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_changelog_has_an_unreleased_section() -> None:
    assert "## Unreleased" in (ROOT / "CHANGELOG.md").read_text()


def test_readme_transcript_matches_the_cli() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("## A first session", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    assert "$ qtap inspect" in block and "$ qtap run" in block and "Ctrl-C to stop" in block
    access = [ln for ln in block.splitlines() if ln.startswith("GET ")]
    assert access
    ev = {"method": "GET", "scheme": "http", "authority": "127.0.0.1:8080", "path": "/", "status": 200,
          "duration_ns": 11_000_000, "response_body_size": 6, "exe": "/usr/bin/curl", "pid": 8353,
          "direction": "egress", "dst_ip": "127.0.0.1"}
    shape = re.sub(r"\d+(\.\d+)?", "N", console_line(ev))
    assert any(re.sub(r"\d+(\.\d+)?", "N", ln) == shape for ln in access), (shape, access)
    stop = next(ln for ln in block.splitlines() if "qtap: stopped after" in ln).removeprefix("^C")
    assert re.sub(r"[\d,]+", "N", stop) == re.sub(r"[\d,]+", "N", summary_line(4, 4, 0, 6.0))


def test_readme_starts_with_the_two_commands() -> None:
    # The project's contract with a newcomer: the first block is exactly "set up and run the agent" and
    # "set up and run the whole suite", and .ci/run calls the second.
    text = (ROOT / "README.md").read_text()
    first = text.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert first == ["bash scripts/bootstrap && .venv/bin/qtap run", "bash scripts/test"]
    assert "bash scripts/test" in (ROOT / ".ci" / "run").read_text()
