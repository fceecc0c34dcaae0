"""OpenID Connect single sign-on: the authorization code flow with PKCE (S256), groups mapped to roles.

    login:    /api/v1/auth/oidc/login  -> 302 to the provider (state, nonce, code_challenge)
    callback: /api/v1/auth/oidc/callback?code&state -> code + verifier exchanged at the token endpoint,
              the ID token's signature (provider JWKS), issuer, audience, expiry and nonce checked,
              the groups claim mapped through ``oidc.group_roles`` -> a session cookie.

The state is stored hashed with its PKCE verifier and nonce (one use, ``login_timeout_s``), in the store
rather than in memory so another instance behind a balancer can finish a login this one started.
A user whose groups map to no role is refused: SSO never creates a user without a team.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt

from qtap_async.control.models import ROLE_RANK
from qtap_async.control.settings import OidcSettings
from qtap_async.errors import ControlAuthError, ControlError

_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def roles_for_groups(groups: list[str], mapping: list[Any]) -> dict[str, str]:
    """team -> role from the provider's groups (the highest role when several groups match a team)."""
    out: dict[str, str] = {}
    for m in mapping:
        if m.group in groups and ROLE_RANK[m.role] > ROLE_RANK.get(out.get(m.team, ""), 0):
            out[m.team] = m.role
    return out


class OidcClient:
    def __init__(self, settings: OidcSettings, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.http = http or httpx.AsyncClient(timeout=10.0)
        self._own_http = http is None
        self._meta: dict[str, Any] | None = None
        self._jwks: dict[str, Any] | None = None
        self._jwks_at = 0.0

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    @property
    def client_secret(self) -> str:
        return os.environ.get(self.settings.client_secret_env, "")

    async def metadata(self) -> dict[str, Any]:
        if self._meta is None:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                r = await self.http.get(url)
                r.raise_for_status()
                meta = r.json()
            except (httpx.HTTPError, ValueError) as e:
                raise ControlError(f"OIDC discovery at {url} failed: {e}") from e
            if meta.get("issuer") != self.settings.issuer:
                raise ControlError(f"OIDC issuer mismatch: configured {self.settings.issuer!r}, "
                                   f"provider says {meta.get('issuer')!r}")
            self._meta = meta
        return self._meta

    async def authorization_url(self, state: str, nonce: str, challenge: str) -> str:
        meta = await self.metadata()
        query = urlencode({
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": self.settings.redirect_url,
            "scope": " ".join(self.settings.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        })
        return f"{meta['authorization_endpoint']}?{query}"

    async def _key_for(self, kid: str | None) -> Any:
        meta = await self.metadata()
        for attempt in range(2):
            # Refetch once when the key id is unknown (the provider rotated its keys), at most every 10 s.
            if self._jwks is None or (attempt == 1 and time.monotonic() - self._jwks_at > 10):
                try:
                    r = await self.http.get(meta["jwks_uri"])
                    r.raise_for_status()
                    self._jwks = r.json()
                except (httpx.HTTPError, ValueError) as e:
                    raise ControlError(f"OIDC keys at {meta.get('jwks_uri')} unavailable: {e}") from e
                self._jwks_at = time.monotonic()
            for k in (self._jwks or {}).get("keys", []):
                if kid is None or k.get("kid") == kid:
                    return jwt.PyJWK(k).key
        raise ControlAuthError("ID token signed with an unknown key", 401)

    async def finish(self, code: str, verifier: str, nonce: str) -> dict[str, Any]:
        """Exchange the code; the verified ID token's claims."""
        meta = await self.metadata()
        try:
            r = await self.http.post(meta["token_endpoint"], data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.settings.redirect_url,
                "code_verifier": verifier,
                "client_id": self.settings.client_id,
                "client_secret": self.client_secret,
            })
        except httpx.HTTPError as e:
            raise ControlError(f"OIDC token endpoint unreachable: {e}") from e
        if r.status_code != 200:
            raise ControlAuthError(f"the provider refused the code (HTTP {r.status_code})", 401)
        try:
            id_token = r.json()["id_token"]
            header = jwt.get_unverified_header(id_token)
        except (ValueError, KeyError, jwt.PyJWTError) as e:
            raise ControlAuthError(f"no valid ID token in the provider's answer: {e}", 401) from e
        key = await self._key_for(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(id_token, key, algorithms=_ALGORITHMS,
                                                audience=self.settings.client_id, issuer=self.settings.issuer,
                                                options={"require": ["exp", "iat", "sub"]}, leeway=60)
        except jwt.PyJWTError as e:
            raise ControlAuthError(f"ID token rejected: {e}", 401) from e
        if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise ControlAuthError("ID token nonce does not match the login", 401)
        return claims

    def identity(self, claims: dict[str, Any]) -> tuple[str, str, list[str]]:
        """(user name, subject, groups) from verified claims."""
        name = str(claims.get(self.settings.username_claim) or claims["sub"])
        raw = claims.get(self.settings.groups_claim) or []
        groups = [str(g) for g in raw] if isinstance(raw, list) else [str(raw)]
        return name, str(claims["sub"]), groups
