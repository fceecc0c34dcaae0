from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cli.main import app


def test_run_reports_an_invalid_config_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "qpoint.yaml"
    bad.write_text("version: 2\ntap:\n  ignore_loopbak: true\n")
    result = CliRunner().invoke(app, ["run", "--config", str(bad)])
    assert result.exit_code == 2
    assert "ignore_loopbak" in result.output and "did you mean 'ignore_loopback'" in result.output


def test_run_reports_a_missing_config_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "no such config file" in result.output
