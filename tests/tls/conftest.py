"""Fixtures for the TLS discovery/probe-point tests: real processes and a Go program built here."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

GO_PROGRAM = """\
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"os"
)

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println("ready", ln.Addr())
	if len(os.Args) > 5 { // never true in the tests: keeps crypto/tls linked in
		c, err := tls.Dial("tcp", os.Args[1], &tls.Config{InsecureSkipVerify: true})
		if err == nil {
			c.Write([]byte("x"))
			b := make([]byte, 10)
			c.Read(b)
		}
	}
	bufio.NewReader(os.Stdin).ReadString('\\n')
}
"""


def _go() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.path.exists(go):
        pytest.fail("the go toolchain is needed to build the test program (not found on PATH or /usr/local/go)")
    return go


@pytest.fixture(scope="session")
def go_binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"plain": with symbols and DWARF, "stripped": -ldflags='-s -w'}; static (CGO_ENABLED=0)."""
    d = tmp_path_factory.mktemp("gotls")
    (d / "main.go").write_text(GO_PROGRAM)
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0", GOTOOLCHAIN="local")
    env.setdefault("HOME", str(d))
    out = {}
    for name, flags in (("plain", []), ("stripped", ["-ldflags=-s -w"])):
        subprocess.run(
            [_go(), "build", *flags, "-o", str(d / name), "main.go"],
            cwd=d,
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        out[name] = d / name
    return out


class Proc:
    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.popen = popen
        self.pid = popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)


@pytest.fixture
def spawn() -> Iterator[object]:
    """spawn(argv, ready=b"ready") starts a process and waits for its ready line on stdout."""
    procs: list[Proc] = []

    def start(argv: list[str], ready: str | None = "ready", **kw: object) -> Proc:
        p = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
        )  # type: ignore[call-overload]
        proc = Proc(p)
        procs.append(proc)
        if ready is not None:
            assert p.stdout is not None
            line = p.stdout.readline()
            if ready not in line:
                err = p.stderr.read() if p.poll() is not None and p.stderr else ""
                pytest.fail(f"{argv[0]} did not become ready: {line!r} {err}")
        return proc

    yield start
    for p in procs:
        p.stop()


PYTHON = sys.executable


JAVA = shutil.which("java") or "/usr/bin/java"
JAVAC = shutil.which("javac") or "/usr/bin/javac"


@pytest.fixture(scope="session")
def sleeper(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Classes of a JVM that prints UP and sleeps (the attach and inspect tests' target)."""
    if not os.path.exists(JAVAC):
        pytest.fail("javac (a JDK 17+) is needed for the Java attach tests")
    d = tmp_path_factory.mktemp("sleeper")
    (d / "Sleeper.java").write_text(
        "public class Sleeper {\n"
        "    public static void main(String[] a) throws Exception {\n"
        "        System.out.println(\"UP\");\n"
        "        System.out.flush();\n"
        "        Thread.sleep(600000);\n"
        "    }\n"
        "}\n")
    subprocess.run([JAVAC, "-d", str(d), str(d / "Sleeper.java")], check=True)
    return str(d)


def start_sleeper(classes: str, *flags: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([JAVA, *flags, "-cp", classes, "Sleeper"], stdout=subprocess.PIPE, text=True,
                         stderr=subprocess.DEVNULL)
    assert p.stdout is not None and p.stdout.readline() == "UP\n"
    return p


@pytest.fixture
def jvm(sleeper: str) -> Iterator[subprocess.Popen[str]]:
    p = start_sleeper(sleeper)
    yield p
    p.kill()
    p.wait()
