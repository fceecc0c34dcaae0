"""The control plane: users, roles and SSO; agent registration; versioned configs pushed to a fleet; audit.

It holds configuration only, never payloads, and imports the shared config types but nothing of the
capture side. The server lives in ``qtap_async.control.app`` (``create_app``) and
``qtap_async.control.server`` (``run``); the agent's side is ``qtap_async.control_client``.
"""

from qtap_async.control.settings import ControlSettings, load_settings
from qtap_async.control.store import Store

__all__ = ["ControlSettings", "Store", "load_settings"]
