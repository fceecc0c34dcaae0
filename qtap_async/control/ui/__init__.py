"""The web UI: server-rendered pages (Jinja2) served by the control plane under /ui, with the API's
sessions, CSRF tokens and roles (viewers read; editors and admins change configs). Traffic comes from
Pulse's query API; payload objects are fetched by the browser straight from the user's object store
(a presigned URL), never through the control plane. Every asset is served from this package (no CDN)."""

from qtap_async.control.ui.pages import UiApp

__all__ = ["UiApp"]
