"""Running the control plane: uvicorn serving the Starlette app on uvloop (the same server as Pulse)."""

from __future__ import annotations

import uvicorn
import uvloop

from qtap_async.control.app import create_app
from qtap_async.control.settings import ControlSettings
from qtap_async.control.store import open_store

# Pulse's server subclass exits 0 after a graceful SIGTERM; reused rather than copied.
from qtap_async.pulse.server import _Server as ExitCleanServer
from qtap_async.pulse.server import parse_listen


async def serve(settings: ControlSettings, log_level: str = "info") -> None:
    host, port = parse_listen(settings.listen)
    store = open_store(settings)  # first, so a bad data directory fails with one clear line
    try:
        app = create_app(settings, store)
        # Agents hold their event streams open forever: give them a few seconds on SIGTERM, then close.
        server = ExitCleanServer(uvicorn.Config(app, host=host, port=port, loop="none", lifespan="on",
                                                log_level=log_level, access_log=False, timeout_graceful_shutdown=3))
        await server.serve()
    finally:
        store.close()


def run(settings: ControlSettings, log_level: str = "info") -> None:
    uvloop.run(serve(settings, log_level))
