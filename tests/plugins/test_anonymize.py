from __future__ import annotations

import hashlib

import pytest

from qtap_async.plugins import auth_token, hash_token, mask_query, masked_target, path_template


@pytest.mark.parametrize(("path", "template"), [
    ("/users/42/orders/7", "/users/{id}/orders/{id}"),
    ("/v1/items", "/v1/items"),
    ("/o/550e8400-e29b-41d4-a716-446655440000", "/o/{uuid}"),
    ("/blob/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "/blob/{hash}"),
    ("/u/jane.doe@example.com/profile", "/u/{email}/profile"),
    ("/reset/aB3dEfGh1jKlMn0pQrStUv", "/reset/{token}"),
    ("/docs/introduction-to-the-api", "/docs/introduction-to-the-api"),
    ("/items?id=5", "/items"),
    ("/", "/"),
    ("", ""),
])
def test_path_template(path: str, template: str) -> None:
    assert path_template(path) == template


def test_mask_query_keeps_only_safe_values() -> None:
    assert mask_query("page=2&token=abc&flag&q=x", {"page"}) == "page=2&token=*&flag&q=*"
    assert mask_query("") == ""
    assert masked_target("/a/1?page=2&k=v", {"page"}, template=True) == "/a/{id}?page=2&k=*"
    assert masked_target("/a/1?k=v") == "/a/1?k=*"


def test_auth_token_takes_the_credential_without_its_scheme() -> None:
    assert auth_token({"authorization": "Bearer abc.def"}) == "abc.def"
    assert auth_token({"authorization": "Basic dXNlcjpwdw=="}) == "dXNlcjpwdw=="
    assert auth_token({"x-api-key": " k1 "}) == "k1"
    assert auth_token({"authorization": "rawtoken", "x-api-key": "k"}) == "rawtoken"
    assert auth_token({"x-custom-key": "c"}, ["X-Custom-Key"]) == "c"
    assert auth_token({"x-custom-key": "c"}) is None
    assert auth_token({"accept": "*/*"}) is None


def test_hash_token_is_sha256_hex() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()
