"""The control plane's API types: request bodies in, resources out. The OpenAPI document is built from them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Role = Literal["viewer", "editor", "admin"]
Scope = Literal["read", "write", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 1, "editor": 2, "admin": 3}
# What each token scope lets a request do, as the lowest role it stands for.
SCOPE_ROLE: dict[str, str] = {"read": "viewer", "write": "editor", "admin": "admin"}

Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$", max_length=64)]
GroupName = Annotated[str, msgspec.Meta(pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})?$", max_length=64)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=10 * 365 * 86400)]
Counter = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Short = Annotated[str, msgspec.Meta(max_length=256)]


class _In(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class _Out(msgspec.Struct, frozen=True, kw_only=True):
    pass


# -- errors --------------------------------------------------------------------------------------


class Issue(_Out, frozen=True):
    """One problem of a config: the field's dotted path, the line/column in the posted YAML, what is wrong."""

    path: str
    message: str
    line: int | None = None
    column: int | None = None


class ErrorBody(_Out, frozen=True):
    error: str
    issues: list[Issue] | None = None


# -- sessions ------------------------------------------------------------------------------------


class LoginIn(_In, frozen=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class Membership(_Out, frozen=True):
    team: str
    role: Role


class Me(_Out, frozen=True):
    user: str
    source: str  # local | oidc | token
    memberships: list[Membership]
    csrf_token: str | None = None  # for browser sessions: send it back as X-CSRF-Token on writes
    expires_at: float | None = None
    pulse_url: str = ""


# -- users and tokens ----------------------------------------------------------------------------


class UserIn(_In, frozen=True):
    name: Name
    role: Role
    team: Name | None = None  # default: the caller's team
    password: Annotated[str, msgspec.Meta(min_length=12, max_length=1024)] | None = None  # None: SSO only


class UserOut(_Out, frozen=True):
    name: str
    source: str
    memberships: list[Membership]
    created_at: float
    disabled: bool


class TokenIn(_In, frozen=True):
    name: Name
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=3)] = msgspec.field(
        default_factory=lambda: ["read"]
    )
    expires_in_s: Seconds | None = None


class TokenOut(_Out, frozen=True):
    id: str
    name: str
    user: str
    scopes: list[str]
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None


class TokenCreated(_Out, frozen=True):
    id: str
    token: str  # shown once; only its hash is stored
    scopes: list[str]
    expires_at: float | None


class RegistrationTokenIn(_In, frozen=True):
    group: GroupName = ""
    expires_in_s: Seconds | None = None
    max_uses: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None


class RegistrationTokenOut(_Out, frozen=True):
    id: str
    team: str
    group: str
    created_by: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    uses: int
    max_uses: int | None


class RegistrationTokenCreated(_Out, frozen=True):
    id: str
    token: str
    team: str
    group: str


# -- configs -------------------------------------------------------------------------------------


class ConfigVersion(_Out, frozen=True):
    team: str
    version: int
    sha256: str
    size: int
    created_by: str
    created_at: float
    comment: str
    active_for: list[str]  # agent groups this version is active for ("" = the team default)


class ConfigDetail(_Out, frozen=True):
    team: str
    version: int
    sha256: str
    created_by: str
    created_at: float
    comment: str
    active_for: list[str]
    yaml: str  # never holds a secret in clear: the control plane refuses plain-text secrets


class ConfigCreated(_Out, frozen=True):
    team: str
    version: int
    sha256: str
    activated: bool
    warnings: list[str]


class ConfigDiff(_Out, frozen=True):
    team: str
    from_version: int
    to_version: int
    diff: str  # unified diff of the YAML


class ActivateIn(_In, frozen=True):
    group: GroupName = ""  # "" = the team default (agents whose group has no activation of its own)


class Activation(_Out, frozen=True):
    team: str
    group: str
    version: int
    activated_by: str
    activated_at: float


# -- agents --------------------------------------------------------------------------------------


class RegisterIn(_In, frozen=True):
    registration_token: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    hostname: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    agent_version: Short = ""
    kernel: Short = ""


class Registered(_Out, frozen=True):
    agent_id: str
    token: str
    team: str
    group: str
    heartbeat_interval_s: float


class AgentStatusIn(_In, frozen=True):
    """A heartbeat: what the agent runs (or refused), its health and its key counters."""

    running_version: Annotated[int, msgspec.Meta(ge=0)] | None = None
    refused_version: Annotated[int, msgspec.Meta(ge=0)] | None = None
    refused_reason: Annotated[str, msgspec.Meta(max_length=8192)] = ""
    health: Literal["ok", "degraded", "failing"] = "ok"
    agent_version: Short = ""
    kernel: Short = ""
    counters: Annotated[dict[Annotated[str, msgspec.Meta(max_length=200)], Counter], msgspec.Meta(max_length=500)] = (
        msgspec.field(default_factory=dict)
    )


class AgentConfig(_Out, frozen=True):
    version: int
    sha256: str
    yaml: str


class AgentOut(_Out, frozen=True):
    id: str
    team: str
    group: str
    hostname: str
    agent_version: str
    kernel: str
    address: str
    registered_at: float
    last_seen: float | None
    state: Literal["online", "stale", "never_seen"]
    health: str
    desired_version: int | None
    running_version: int | None
    refused_version: int | None
    refused_reason: str
    counters: dict[str, int]


# -- audit ---------------------------------------------------------------------------------------


class AuditRecord(_Out, frozen=True):
    id: int
    ts: float
    actor: str  # user name, "agent:<id>", or "cli"
    address: str  # client address ("" for the CLI)
    team: str
    action: str
    target: str
    detail: dict[str, Any]
