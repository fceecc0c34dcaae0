"""Running the control plane: uvicorn serving the Starlette app on uvloop (the same server as Pulse)."""

from __future__ import annotations

import uvicorn
import uvloop

from qtap_async.control.app import create_app
from qtap_async.control.settings import ControlSettings
from qtap_async.control.store import open_store
from qtap_async.pulse.guard import guarded_protocol

# Pulse's server subclass exits 0 after a graceful SIGTERM; reused rather than copied.
from qtap_async.pulse.server import _Server as ExitCleanServer
from qtap_async.pulse.server import parse_listen
from qtap_async.telemetry.metrics import CONTROL_CONNECTIONS_REFUSED


async def serve(settings: ControlSettings, log_level: str = "info") -> None:
    host, port = parse_listen(settings.listen)
    store = open_store(settings)  # first, so a bad data directory fails with one clear line
    try:
        app = create_app(settings, store)
        limits = settings.limits
        # The same connection guard as Pulse: 429 past max_connections, 408 for a head not in time (h11,
        # whose buffer bounds a head that arrives in pieces).
        protocol = guarded_protocol(limits.max_connections, limits.header_timeout_s, app.state.control.metrics,
                                    CONTROL_CONNECTIONS_REFUSED)
        # Agents hold their event streams open forever: give them a few seconds on SIGTERM, then close.
        server = ExitCleanServer(uvicorn.Config(app, host=host, port=port, loop="none", lifespan="on", http=protocol,
                                                h11_max_incomplete_event_size=limits.max_header_bytes,
                                                log_level=log_level, access_log=False, timeout_graceful_shutdown=3))
        await server.serve()
    finally:
        store.close()


def run(settings: ControlSettings, log_level: str = "info") -> None:
    uvloop.run(serve(settings, log_level))
