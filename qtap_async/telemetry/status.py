"""The agent's status endpoint: its metric registry, readiness probe and server, started with the agent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtap_async.telemetry.metrics import MetricRegistry
from qtap_async.telemetry.readiness import ReadinessProbe, runners_of
from qtap_async.telemetry.server import StatusServer, parse_listen

if TYPE_CHECKING:
    from qtap_async.topology.runtime import Agent


class AgentStatus:
    def __init__(self, agent: Agent, listen: str, *, check_interval_s: float = 10.0) -> None:
        where = parse_listen(listen)
        assert where is not None, "AgentStatus needs an address; `off` means no AgentStatus"
        self.agent = agent
        self.probe = ReadinessProbe(agent.attached.is_set, lambda: runners_of(agent.writer),
                                    interval_s=check_interval_s)
        self.registry = MetricRegistry([agent.snapshot, self.probe.snapshot])
        self.server = StatusServer(where[0], where[1], self.registry, self.probe.state)
        self.registry.add_source(self.server.snapshot)
        self.registry.add_families(agent.metric_families)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        await self.server.start()
        self.probe.start()

    async def close(self) -> None:
        await self.probe.stop()
        await self.server.close()
