"""Request plumbing shared by the handlers: bounded bodies, JSON depth, typed query strings, errors."""

from __future__ import annotations

import asyncio
import re
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from qtap_async.control.models import ErrorBody, Issue
from qtap_async.control.settings import ApiLimits
from qtap_async.errors import QtapError

T = TypeVar("T")
_encode = msgspec.json.Encoder().encode
_INT = re.compile(r"^[0-9]{1,15}$")
_FLOAT = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")


class ApiError(QtapError):
    """An answer other than success, with its status and message (and config issues for 422).

    Not a ControlError: routes catch ControlError around store calls to answer 502/503, and an ApiError
    raised in such a block (a bad query parameter) must reach the client with its own status."""

    def __init__(self, status: int, message: str, issues: list[Issue] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.message = message
        self.issues = issues
        self.headers = headers
        super().__init__(message)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(obj), status, headers, media_type="application/json")


def error_response(e: ApiError) -> Response:
    return json_response(ErrorBody(error=e.message, issues=e.issues), e.status, e.headers)


async def read_body(request: Request, limits: ApiLimits) -> bytes:
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "content-length is not a number")
        if int(declared) > limit:
            raise ApiError(413, f"body is {declared} bytes; the limit is {limit} (limits.max_body_bytes)")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"body is over the limit of {limit} bytes (limits.max_body_bytes)")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"body not received within {limits.body_timeout_s:g} s (limits.body_timeout_s)",
                       headers={"Connection": "close"}) from None
    return b"".join(chunks)


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text (strings skipped), without parsing it."""
    depth = best = 0
    in_str = escaped = False
    for b in data:
        if in_str:
            if escaped:
                escaped = False
            elif b == 0x5C:
                escaped = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > best:
                best = depth
        elif b in (0x5D, 0x7D):
            depth -= 1
    return best


def _check_media(request: Request, allowed: tuple[str, ...]) -> None:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype not in allowed:
        raise ApiError(415, f"Content-Type must be {' or '.join(allowed)}, got {ctype!r}")


async def json_body(request: Request, limits: ApiLimits, tp: type[T], *, optional: bool = False) -> T:
    """The body decoded strictly into ``tp``; 400 malformed, 413 too large/deep, 415 wrong type, 422 invalid."""
    _check_media(request, ("application/json",))
    body = await read_body(request, limits)
    if not body.strip():
        if optional:
            return msgspec.convert({}, tp)
        raise ApiError(400, "a JSON body is required")
    # The byte-by-byte scan only runs when the body has enough brackets to be too deep at all (counting is C-fast).
    if body.count(b"[") + body.count(b"{") > limits.max_json_depth and json_depth(body) > limits.max_json_depth:
        raise ApiError(413, f"JSON nested deeper than {limits.max_json_depth} levels (limits.max_json_depth)")
    try:
        return msgspec.json.decode(body, type=tp)
    except msgspec.ValidationError as e:
        raise ApiError(422, f"invalid body: {e}") from None
    except msgspec.DecodeError as e:
        raise ApiError(400, f"malformed JSON: {e}") from None


async def yaml_body(request: Request, limits: ApiLimits) -> str:
    _check_media(request, ("application/yaml", "application/x-yaml", "text/yaml", "text/plain"))
    body = await read_body(request, limits)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the body is not UTF-8 (byte {e.start})") from None


class Query:
    """Typed, strict access to the query string: bad values are 422 naming the parameter."""

    def __init__(self, request: Request) -> None:
        self.params = request.query_params

    def text(self, name: str, default: str = "", max_length: int = 256) -> str:
        value = self.params.get(name)
        if value is None:
            return default
        if len(value) > max_length:
            raise ApiError(422, f"query parameter {name!r}: longer than {max_length} characters")
        return value

    def integer(self, name: str, default: int, lo: int = 0, hi: int = 10**12) -> int:
        value = self.params.get(name)
        if value is None:
            return default
        if not _INT.match(value) or not lo <= int(value) <= hi:
            raise ApiError(422, f"query parameter {name!r}: expected an integer from {lo} to {hi}, got {value!r}")
        return int(value)

    def opt_float(self, name: str) -> float | None:
        value = self.params.get(name)
        if value is None:
            return None
        if not _FLOAT.match(value):
            raise ApiError(422, f"query parameter {name!r}: expected epoch seconds, got {value!r}")
        return float(value)

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.params.get(name)
        if value is None:
            return default
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ApiError(422, f"query parameter {name!r}: expected true or false, got {value!r}")


def path_int(request: Request, name: str) -> int:
    value = str(request.path_params.get(name, ""))
    if not _INT.match(value):
        raise ApiError(404, f"no {name} {value!r}")
    return int(value)


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""
