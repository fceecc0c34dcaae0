"""Passwords, tokens, scopes and the login limiter."""

from __future__ import annotations

from qtap_async.control.auth import (
    LoginLimiter,
    cap_roles,
    hash_password,
    make_token,
    token_kind,
    verify_password,
)


def test_passwords_are_argon2_and_verify() -> None:
    h = hash_password("correct horse battery")
    assert h.startswith("$argon2id$") and "correct" not in h
    assert verify_password(h, "correct horse battery")
    assert not verify_password(h, "wrong")
    assert not verify_password(None, "anything")  # no such user: same work, always false
    assert not verify_password("not a hash", "x")


def test_tokens_have_a_kind_and_enough_entropy() -> None:
    ids = set()
    for kind in ("qct", "qca", "qcr"):
        token_id, token = make_token(kind)
        assert token_kind(token) == kind and token.startswith(f"{kind}_{token_id}_")
        ids.add(token)
    assert len(ids) == 3
    assert token_kind("qct_short") is None and token_kind("") is None and token_kind("x" * 10_000) is None


def test_scopes_cap_roles() -> None:
    roles = {"a": "admin", "b": "editor", "c": "viewer"}
    assert cap_roles(roles, ["read"]) == {"a": "viewer", "b": "viewer", "c": "viewer"}
    assert cap_roles(roles, ["write"]) == {"a": "editor", "b": "editor", "c": "viewer"}
    assert cap_roles(roles, ["admin", "read"]) == roles
    assert cap_roles(roles, []) == {}


def test_login_limiter_per_user_and_per_address() -> None:
    lim = LoginLimiter(max_per_user=2, max_per_address=3, window_s=60)
    assert lim.retry_after("u", "1.1.1.1") == 0
    lim.failed("u", "1.1.1.1")
    lim.failed("u", "1.1.1.2")
    assert lim.retry_after("u", "9.9.9.9") > 0  # the user is locked from every address
    assert lim.retry_after("v", "1.1.1.1") == 0
    lim.failed("v", "1.1.1.1")
    lim.failed("w", "1.1.1.1")
    assert lim.retry_after("x", "1.1.1.1") > 0  # three failures from one address, any names
    lim.succeeded("u")
    assert lim.retry_after("u", "9.9.9.9") == 0
