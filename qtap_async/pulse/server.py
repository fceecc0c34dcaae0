"""Running Pulse: uvicorn serving the Starlette app on uvloop, plus the optional Kafka consumer."""

from __future__ import annotations

import asyncio
from types import FrameType

import uvicorn
import uvloop

from qtap_async.errors import ConfigError
from qtap_async.pulse.app import create_app
from qtap_async.pulse.config import PulseConfig
from qtap_async.pulse.guard import guarded_protocol
from qtap_async.pulse.storage import open_storage


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown (the process then dies of the
    signal); Pulse exits 0 instead once it has committed and flushed, as the rest of qtap does."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen {listen!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve(config: PulseConfig, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; on the way out the Kafka consumer commits and the writer flushes."""
    host, port = parse_listen(config.listen)
    # Storage first, so a bad URL or a data directory in use fails with one clear line, not inside
    # uvicorn's lifespan.
    storage = await asyncio.to_thread(open_storage, config)
    try:
        app = create_app(config, storage=storage)
        if config.kafka.enabled:
            from qtap_async.pulse.kafka import run_kafka

            app.state.pulse.background.append(run_kafka)
        limits = config.limits
        protocol = guarded_protocol(limits.max_connections, limits.header_timeout_s, app.state.pulse.metrics)
        server = _Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                loop="none",
                http=protocol,
                h11_max_incomplete_event_size=limits.max_header_bytes,
                lifespan="on",
                log_level=log_level,
                access_log=False,
            )
        )
        await server.serve()
    finally:
        await asyncio.to_thread(storage.close)


def run(config: PulseConfig, log_level: str = "info") -> None:
    uvloop.run(serve(config, log_level))
