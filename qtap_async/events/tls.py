"""TLS ClientHello: as the protocol layer records it and as an event (a connection no probe decrypts)."""

from __future__ import annotations

import msgspec

from qtap_async.events.context import ConnContext, Timestamp

__all__ = ["TlsClientHello", "TlsClientHelloEvent"]


class TlsClientHello(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="tls_client_hello",
                     tag_field="kind"):
    """A TLS ClientHello seen in plaintext (a connection no probe decrypts).

    ``version`` is the highest version offered ("TLS1.3" when supported_versions lists it, else the
    legacy version); ``cipher_suites`` and ``extensions`` keep wire order (GREASE values included)
    so fingerprints (JA3/JA4) can be computed downstream.
    """

    direction: int
    ts_ns: int
    sni: str | None = None
    alpn: list[str] = []
    version: str = ""
    legacy_version: str = ""
    supported_versions: list[str] = []
    cipher_suites: list[int] = []
    extensions: list[int] = []


class TlsClientHelloEvent(ConnContext, frozen=True, gc=False, kw_only=True, tag="tls_client_hello",
                          tag_field="type", omit_defaults=True):
    """A ``TlsClientHello`` with its connection context (the hello is always on the opener's stream)."""

    id: str
    ts: Timestamp
    sni: str | None
    alpn: list[str]
    version: str
    legacy_version: str
    supported_versions: list[str]
    cipher_suites: list[int]
    extensions: list[int]
