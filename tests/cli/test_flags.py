"""Bad command-line values: one line on stderr, exit code 2, never a traceback or a usage block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli.helpers import ROOT, qtap

BAD = [
    # Each numeric flag of run: the line names the flag, the value and the reason.
    (["run", "--ring-buffer-mib", "0"], "--ring-buffer-mib 0: expected a power of two >= 1"),
    (["run", "--ring-buffer-mib", "-4"], "--ring-buffer-mib -4: expected a power of two >= 1"),
    (["run", "--ring-buffer-mib", "3"], "--ring-buffer-mib 3: expected a power of two"),
    (["run", "--ring-buffer-mib", "2048"], "--ring-buffer-mib 2048: at most 1024"),
    (["run", "--ring-buffer-mib", "lots"], "'--ring-buffer-mib': Input should be a valid integer"),
    (["run", "--max-connections", "-1"], "--max-connections -1: expected at least 1"),
    (["run", "--max-connections", "1e3"], "'--max-connections': Input should be a valid integer"),
    (["run", "--idle-timeout", "-5"], "--idle-timeout -5.0: expected a finite number of seconds > 0"),
    (["run", "--idle-timeout", "inf"], "--idle-timeout inf: expected a finite number of seconds > 0"),
    (["run", "--idle-timeout", "nan"], "--idle-timeout nan: expected a finite number of seconds > 0"),
    (["run", "--metrics-interval", "-1"], "--metrics-interval -1.0: expected a finite number of seconds >= 0"),
    (["run", "--metrics-interval", "nan"], "--metrics-interval nan: expected a finite number of seconds >= 0"),
    (["run", "--metrics-interval", "inf"], "--metrics-interval inf: expected a finite number of seconds >= 0"),
    (["run", "--pid", "-1"], "--pid -1: expected a process id"),
    (["run", "--port", "0"], "--port 0: a port is 1-65535"),
    (["run", "--log-level", "LOUD"], "--log-level LOUD"),
    (["run", "--pid", "999999"], "--pid 999999: no such process"),
    (["run", "--pid", "abc"], "--pid"),
    (["run", "--level", "everything"], "--level everything"),
    (["run", "--cpu-priority", "realtime"], "--cpu-priority realtime: expected one of normal, low, idle"),
    (["run", "--format", "yaml"], "--format yaml"),
    (["run", "--max-connections", "0"], "--max-connections 0"),
    (["run", "--idle-timeout", "0"], "--idle-timeout"),
    (["run", "--port", "70000"], "--port 70000"),
    (["run", "--direction", "sideways"], "--direction sideways"),
    (["run", "--container", "not-an-id"], "--container not-an-id"),
    (["run", "--output", "/nonexistent-dir/x.jsonl"], "--output"),
    (["run", "--bogus"], "No such option: --bogus"),
    (["run", "--config", str(ROOT / "examples" / "local.yaml"), "--level", "full"],
     "--level does not apply with --config"),
    (["run", "--config", str(ROOT / "examples" / "local.yaml"), "--format", "console"],
     "--format does not apply with --config"),
    (["nope"], "No such command"),
    (["record", "--out", "/tmp/never-written.rec", "--ring-buffer-mib", "0"], "--ring-buffer-mib 0"),
    (["record", "--out", "/tmp/never-written.rec", "--log-level", "LOUD"], "--log-level LOUD"),
    (["record", "--out", "/tmp/never-written.rec", "--pid", "999999"], "--pid 999999: no such process"),
    (["replay", str(ROOT / "tests" / "data" / "http1_small.qrec"), "--batch", "0"], "--batch 0"),
    (["pulse", "serve", "--log-level", "LOUD"], "--log-level LOUD"),
    (["pulse", "query", "top-domains", "--limit", "x"], "--limit"),
]


@pytest.mark.parametrize(("args", "words"), BAD, ids=[" ".join(a[:3]) for a, _ in BAD])
def test_bad_value_is_one_line_and_exit_2(args: list[str], words: str) -> None:
    r = qtap(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert words in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_help_reads_like_a_cli_and_says_what_applies_with_config() -> None:
    for flag in ("-h", "--help"):
        r = qtap("run", flag)
        assert r.returncode == 0
        assert "<bool>" not in r.stdout and "<int>" not in r.stdout and "╭" not in r.stdout
        text = " ".join(r.stdout.split())
        assert "--level and --format are refused" in text
        assert "refused with --config" in text and "also with --config" in text


@pytest.mark.parametrize("command", ["", "inspect", "validate", "record", "replay", "pulse serve", "pulse token create",
                                     "pulse query top-endpoints", "pulse query timeseries"])
def test_every_help_is_plain(command: str) -> None:
    r = qtap(*command.split(), "-h")
    assert r.returncode == 0 and "Usage: qtap" in r.stdout
    assert not re.search(r"<[a-z_\[\]]+>", r.stdout), r.stdout  # no <bool>, <path>, <int>
    assert "╭" not in r.stdout


def test_version() -> None:
    from qtap_async import __version__

    for flag in ("--version", "-V"):
        r = qtap(flag)
        assert r.returncode == 0 and r.stdout.strip() == f"qtap {__version__}"


def test_shell_completion_script_and_completions() -> None:
    import os
    import subprocess
    import sys

    # From a shell, as a person types it (the shell is detected from the parent process; "; exit" keeps
    # bash from replacing itself with the command).
    script = subprocess.run(["bash", "-c", f"{sys.executable} -m cli.main --show-completion; exit $?"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert script.returncode == 0, script.stderr
    assert "_qtap_completion" in script.stdout and "complete " in script.stdout
    # What the installed script asks for when TAB is pressed after `qtap run --for`.
    env = {**os.environ, "_QTAP_COMPLETE": "complete_bash", "COMP_WORDS": "qtap run --for", "COMP_CWORD": "2"}
    words = subprocess.run([sys.executable, "-m", "cli.main"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60)
    assert words.stdout.split() == ["--format"], words


def test_validator_reports_every_problem_of_a_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("""version: 2
stacks:
  default:
    plugins:
      - type: http_capture
        config:
          level: everything
          formt: json
      - type: access_logs
        config:
          mode: loud
tap:
  direction: sideways
  ignore_loopbak: true
""")
    r = qtap("validate", str(f))
    assert r.returncode == 1
    out = r.stderr
    assert "(5 problems)" in out, out
    for where, words in ((7, "everything"), (8, "formt"), (11, "loud"), (13, "sideways"), (14, "ignore_loopbak")):
        assert f"bad.yaml:{where}:" in out and words in out, (where, out)


def test_validator_reports_structure_and_rule_problems_together(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("""version: 2
stacks:
  default:
    plugins:
      - type: http_capture
        config:
          level: summary
          rules:
            - name: broken
              expr: http.res.status >=
              level: full
tap:
  ignore_loopbak: true
  http:
    stack: defualt
""")
    r = qtap("validate", str(f))
    assert r.returncode == 1
    assert "ignore_loopbak" in r.stderr and "expr" in r.stderr and "defualt" in r.stderr, r.stderr


@pytest.mark.parametrize(("text", "line", "words"), [
    ("version: 2\ntap:\n  direction: all\n   ignore_loopback: true\n", 4, "indented deeper"),
    ("version: 2\ntap:\n  direction: all\n http:\n    stack: x\n", 4, "indentation of this line"),
    ("version: 2\ntap:\n\tdirection: all\n", 3, "tab"),
])
def test_yaml_indentation_error_is_a_sentence_with_the_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    f = tmp_path / "indent.yaml"
    f.write_text(text)
    r = qtap("validate", str(f))
    assert r.returncode == 1
    assert f"indent.yaml:{line}:" in r.stderr and words in r.stderr, r.stderr
    assert "<block" not in r.stderr and "mapping values are not allowed" not in r.stderr
    assert f"    {line} | " in r.stderr  # the line itself, under the message
    run = qtap("run", "--config", str(f))
    assert run.returncode == 2 and words in run.stderr and "Traceback" not in run.stderr


@pytest.mark.bpf
def test_inspect_reports_capabilities_not_the_uid() -> None:
    """As root with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN dropped, inspect names what is missing."""
    drop = "-bpf,-perfmon,-sys_admin"
    r = qtap("inspect", prefix=["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", "--"])
    assert r.returncode == 1, r.stdout
    assert "root=yes" not in r.stdout
    assert "CAP_BPF=NO" in r.stdout and "CAP_PERFMON=NO" in r.stdout and "CAP_SYS_ADMIN=NO" in r.stdout
    assert "missing CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)" in r.stdout
    run = qtap("run", prefix=["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", "--"])
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "missing CAP_BPF" in run.stderr and "Traceback" not in run.stderr
    full = qtap("inspect", "--json")
    assert '"CAP_BPF": true' in full.stdout or '"CAP_BPF":true' in full.stdout


@pytest.mark.bpf
def test_inspect_warns_without_cap_sys_ptrace() -> None:
    r = qtap("inspect", prefix=["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", "--"])
    assert "CAP_SYS_PTRACE=NO" in r.stdout and "/proc/PID/root" in r.stdout, r.stdout
