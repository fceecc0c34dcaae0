"""/readyz: the probes are attached and every store answers, with the reasons when not.

A store that receives nothing is never exercised by delivery, so its health would stay "up" while it is
unreachable: the probe checks each store itself (``sink.check()``) on an interval, off the drain's path, with a
timeout, and keeps the last answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from qtap_async.telemetry import metrics

log = logging.getLogger("qtap.status")


class Checkable(Protocol):
    async def check(self) -> None: ...


class StoreRunner(Protocol):
    """What readiness needs of a sink runner (qtap_async.sinks.runner.SinkRunner)."""

    kind: str
    name: str
    up: bool
    last_error: str

    @property
    def sink(self) -> Any: ...


class Readiness(msgspec.Struct, frozen=True):
    ready: bool
    reasons: list[str]
    stores: dict[str, str]  # "event:pulse" -> "ok" | the last error


def runners_of(writer: object) -> list[StoreRunner]:
    """The store runners of an agent's writer (topology.Writer has them with a config; the local output has none)."""
    out: list[StoreRunner] = []
    for attr in ("events", "objects"):
        out.extend(getattr(writer, attr, None) or [])
    return out


class ReadinessProbe:
    def __init__(self, attached: Callable[[], bool], runners: Callable[[], list[StoreRunner]], *,
                 interval_s: float = 10.0, timeout_s: float = 5.0) -> None:
        self.attached = attached
        self.runners = runners
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._checked: dict[str, str] = {}  # store key -> "" (ok) or the error of the last check
        self.checks = 0
        self.check_failures = 0
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def key(r: StoreRunner) -> str:
        return f"{r.kind}:{r.name}"

    async def check_once(self) -> None:
        runners = self.runners()
        results = await asyncio.gather(*(self._check(r) for r in runners))
        self._checked = {self.key(r): err for r, err in zip(runners, results, strict=True)}

    async def _check(self, r: StoreRunner) -> str:
        self.checks += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                await r.sink.check()
        except TimeoutError:
            err = f"no answer within {self.timeout_s:g} s"
        except Exception as exc:  # any failure of a store check is a reason, never a crash of the probe
            err = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        else:
            return ""
        self.check_failures += 1
        return err

    async def _loop(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # the probe must outlive anything a store does
                log.exception("readiness check failed")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="readiness")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def state(self) -> Readiness:
        reasons: list[str] = []
        if not self.attached():
            reasons.append("BPF probes are not attached (yet)")
        stores: dict[str, str] = {}
        for r in self.runners():
            key = self.key(r)
            checked = self._checked.get(key)
            if checked is None:
                reasons.append(f"store {key}: not checked yet")
                stores[key] = "not checked yet"
            elif checked:
                reasons.append(f"store {key} is unreachable: {checked}")
                stores[key] = checked
            elif not r.up:
                reasons.append(f"store {key} is failing deliveries: {r.last_error}")
                stores[key] = r.last_error
            else:
                stores[key] = "ok"
        return Readiness(not reasons, reasons, stores)

    def snapshot(self) -> dict[str, int]:
        st = self.state()
        return {metrics.READY.name: int(st.ready), metrics.STORE_CHECKS.name: self.checks,
                metrics.STORE_CHECK_FAILURES.name: self.check_failures}
