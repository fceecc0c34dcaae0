"""Control plane settings: a msgspec Struct read from YAML, overridden by command-line flags.

Every hostile-input limit is a named setting here with its default; docs/control.md lists them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from qtap_async.errors import ConfigError

Positive = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Role = Literal["viewer", "editor", "admin"]


class ApiLimits(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """What a request may carry before it is refused with a 4xx (never read further)."""

    max_body_bytes: Positive = 1024 * 1024  # JSON or YAML request body, as sent
    max_json_depth: Positive = 32  # nesting of arrays/objects in a JSON body
    max_yaml_depth: Positive = 64  # nesting of a config body (the agent's own configs use < 10)
    max_auth_header_bytes: Positive = 4096  # Authorization / Cookie / X-CSRF-Token values
    max_name_length: Positive = 64  # user, team, group, token names
    max_password_bytes: Positive = 1024  # argon2 hashes anything, but hashing megabytes is a DoS
    max_list_limit: Positive = 1000  # largest ?limit= on list endpoints
    # Connections (docs/security.md). One over ``max_connections`` is answered 429 and closed; each agent's
    # config stream holds one for as long as the agent runs, so size it for the fleet an instance serves.
    max_connections: Positive = 1024
    # A request head (request line + headers) must arrive within ``header_timeout_s`` (else 408 and closed:
    # slowloris, idle sockets) and fit in ``max_header_bytes`` (else 400 / 431).
    header_timeout_s: PositiveFloat = 10.0
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 1024
    body_timeout_s: PositiveFloat = 30.0  # a body not complete in time: 408


class LoginLimits(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """Failed logins allowed per user name and per client address within ``window_s``; past them 429."""

    max_failures_per_user: Positive = 5
    max_failures_per_address: Positive = 20
    window_s: PositiveFloat = 300.0


class GroupRole(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """Members of the provider's ``group`` get ``role`` in ``team``."""

    group: str
    team: str
    role: Role


class OidcSettings(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """Single sign-on with an OpenID Connect provider (authorization code flow with PKCE)."""

    issuer: str = ""  # empty: SSO off
    client_id: str = ""
    # The client secret is never in the settings file: the name of the environment variable holding it.
    client_secret_env: str = "QTAP_CONTROL_OIDC_CLIENT_SECRET"
    # Where the provider sends the browser back: <public URL of this service>/api/v1/auth/oidc/callback.
    redirect_url: str = ""
    scopes: list[str] = msgspec.field(default_factory=lambda: ["openid", "email", "profile", "groups"])
    groups_claim: str = "groups"
    username_claim: str = "email"
    group_roles: list[GroupRole] = msgspec.field(default_factory=list)
    login_timeout_s: PositiveFloat = 600.0  # how long a started login (state, PKCE verifier) stays valid

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)


class PayloadAccess(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """How the web UI lets the BROWSER fetch payload objects from the user's S3-compatible store. The
    control plane signs a short-lived GET URL (for ``s3://bucket/key`` references) and the browser fetches
    the object itself: payload bytes never pass through the control plane. References that are already
    http(s) URLs (an ``access_url`` template) are handed to the browser as they are."""

    # The S3 API as the browser reaches it (http://minio.example:9000); empty: AWS S3 in ``region``.
    endpoint: str = ""
    region: str = "us-east-1"
    # Names of the environment variables holding the signing credentials (read-only ones, ideally); the
    # keys themselves are never in the settings file.
    access_key_env: str = "QTAP_CONTROL_S3_ACCESS_KEY"
    secret_key_env: str = "QTAP_CONTROL_S3_SECRET_KEY"
    presign_ttl_s: Annotated[int, msgspec.Meta(ge=10, le=3600)] = 300
    addressing_style: Literal["path", "virtual"] = "path"
    # Objects larger than this are not fetched by the page (it says so and offers the link instead).
    max_display_bytes: Positive = 2 * 1024 * 1024


class UiSettings(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """The web UI under /ui: pages read traffic from Pulse's query API (``pulse_url``) with a query token."""

    enabled: bool = True
    # The environment variable holding a Pulse token with the ``query`` scope (`qtap pulse token create`).
    pulse_token_env: str = "QTAP_CONTROL_PULSE_TOKEN"
    pulse_timeout_s: PositiveFloat = 10.0
    page_size: Annotated[int, msgspec.Meta(ge=10, le=500)] = 50
    payloads: PayloadAccess = msgspec.field(default_factory=PayloadAccess)


class ControlSettings(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    data_dir: str = "control-data"
    listen: str = "127.0.0.1:8429"
    # Empty: SQLite in <data_dir>/control.sqlite3. Else sqlite:///PATH or postgresql://USER:PASS@HOST/DB
    # (several instances on one database); the same SQL runs on both (store.py, db.py).
    database_url: str = ""
    # Pulse's URL: shown to API clients, and where the web UI's pages query traffic (ui.pulse_token_env).
    # The control plane stores no events and no payloads.
    pulse_url: str = ""
    # Secure cookies: on unless the service is reached over plain HTTP (local development, tests).
    cookie_secure: bool = True
    session_ttl_s: PositiveFloat = 8 * 3600.0
    # Agents: how often they heartbeat, and how long without one before an agent is "stale".
    heartbeat_interval_s: PositiveFloat = 15.0
    stale_after_s: PositiveFloat = 60.0
    # One watcher per process re-reads the activations this often, so a version activated through another
    # instance (or the CLI) reaches the agents streaming from this one too.
    push_poll_s: PositiveFloat = 2.0
    push_keepalive_s: PositiveFloat = 15.0
    limits: ApiLimits = msgspec.field(default_factory=ApiLimits)
    login: LoginLimits = msgspec.field(default_factory=LoginLimits)
    oidc: OidcSettings = msgspec.field(default_factory=OidcSettings)
    ui: UiSettings = msgspec.field(default_factory=UiSettings)

    @property
    def sqlite_path(self) -> Path:
        return Path(self.data_dir) / "control.sqlite3"


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> ControlSettings:
    """Read YAML (if given), apply non-None ``overrides`` (nested keys with ``__``), validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        raw = dict(loaded or {})
    for key, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return msgspec.convert(raw, ControlSettings)
    except msgspec.ValidationError as e:
        raise ConfigError(f"control settings: {e}") from e
