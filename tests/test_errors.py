"""The error tree: every exception qtap_async defines derives from QtapError, the drawing in errors.py's
docstring is the real tree, and each class that joined the tree is still caught where it was caught before."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import re

import pytest

import qtap_async
from qtap_async import errors
from qtap_async.errors import QtapError

_LINE = re.compile(r"^(?P<indent>(?:│   |    )*)(?:├── |└── )?(?P<name>\w+)\s*(?:\[(?P<module>[\w.]+)\])?")


def _drawing() -> dict[str, tuple[str | None, str]]:
    """name -> (parent name, module) from the tree in errors.py's docstring."""
    doc = errors.__doc__ or ""
    lines = [ln[4:] for ln in doc.splitlines() if ln.startswith("    ") and ln.strip()]
    start = lines.index("QtapError")
    tree: dict[str, tuple[str | None, str]] = {}
    stack: list[str] = []
    for ln in lines[start:]:
        m = _LINE.match(ln)
        assert m is not None, ln
        depth = len(m.group("indent")) // 4 + (0 if ln == "QtapError" else 1)
        del stack[depth:]
        module = "qtap_async." + (m.group("module") or "errors")
        tree[m.group("name")] = (stack[-1] if stack else None, module)
        stack.append(m.group("name"))
    return tree


def _all_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(qtap_async.__path__, "qtap_async."):
        names.append(info.name)
    return names


def _defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _all_modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_defined_in_the_package_derives_from_qtap_error() -> None:
    outside = sorted(k for k, cls in _defined_exceptions().items() if not issubclass(cls, QtapError))
    assert outside == []


def test_the_docstring_draws_the_real_tree() -> None:
    drawn = _drawing()
    real: dict[str, tuple[str | None, str]] = {}
    for cls in _defined_exceptions().values():
        if issubclass(cls, QtapError):
            # The parent in the drawing is the nearest QtapError base (DecodeError is also a ValueError).
            parent = next((b.__name__ for b in cls.__bases__ if issubclass(b, QtapError)), None)
            real[cls.__name__] = (parent, cls.__module__)
    assert drawn == real


def test_moved_classes_live_in_errors_and_keep_their_old_import_paths() -> None:
    from qtap_async.buffers import ChannelClosed as from_buffers
    from qtap_async.buffers.channel import ChannelClosed as from_channel

    assert from_buffers is from_channel is errors.ChannelClosed
    for name in ("ChannelClosed", "DecodeError", "GoBinaryError", "BodyError", "QueryError"):
        assert getattr(errors, name).__module__ == "qtap_async.errors"


async def test_channel_closed_is_caught_by_the_stage_loop() -> None:
    from qtap_async.buffers.channel import Channel
    from qtap_async.topology import Graph, StdoutWriter

    ch: Channel[bytes] = Channel(4, 1 << 20)
    ch.close()
    with pytest.raises(errors.ChannelClosed):
        await ch.send(b"x")
    rx: Channel[list[bytes]] = Channel(4, 1 << 20)
    tx: Channel[list[object]] = Channel(4, 1 << 20)
    rx.close()
    # The stage ends its loop on ChannelClosed from its input instead of dying with it.
    await asyncio.wait_for(Graph(None, local=StdoutWriter(), sweep=False).stage.run(rx, tx), 5)


def test_decode_error_is_counted_by_the_stage_and_still_a_value_error() -> None:
    from qtap_async.sources.decode import decode
    from qtap_async.topology import Graph, StdoutWriter

    with pytest.raises(ValueError, match="malformed record"):
        decode(b"\x03\x00")
    stage = Graph(None, local=StdoutWriter(), sweep=False).stage
    assert stage.process([b"\x03\x00", b"\x99" * 64]) == []
    assert stage.decode_errors == 2


def test_go_binary_error_becomes_a_note_and_is_not_an_elf_format_error() -> None:
    from qtap_async.tls import golang
    from qtap_async.tls.elf import ElfFormatError

    with pytest.raises(errors.GoBinaryError, match="truncated varint"):
        golang._uvarint(b"\x80", 0)
    assert not issubclass(errors.GoBinaryError, ElfFormatError)


def test_body_error_carries_its_status_and_is_a_pulse_error() -> None:
    from qtap_async.pulse.config import IngestLimits
    from qtap_async.pulse.ingest import decode_body

    with pytest.raises(errors.BodyError) as info:
        decode_body(b"[]", "text/plain", "", IngestLimits())
    assert info.value.status == 415 and "unsupported Content-Type" in str(info.value)
    with pytest.raises(errors.PulseError):
        decode_body(b"[]", "application/json", "br", IngestLimits())


def test_query_error_is_a_pulse_error_answered_with_422() -> None:
    assert issubclass(errors.QueryError, errors.PulseError)
    assert errors.QueryError("end must be after start").status == 422


def test_api_error_passes_through_a_control_error_handler() -> None:
    from qtap_async.control.http import ApiError

    # Routes wrap store calls in `except ControlError` to answer 503; a 422 raised there must stay a 422.
    with pytest.raises(ApiError) as info:
        try:
            raise ApiError(422, "query parameter 'limit': not a number")
        except errors.ControlError:  # pragma: no cover - the point is that this does not match
            pytest.fail("ApiError was caught as a ControlError")
    assert info.value.status == 422


def test_invalid_config_is_a_config_error_with_every_issue() -> None:
    from qtap_async.control.configs import InvalidConfig, check_config

    with pytest.raises(errors.ConfigError) as info:
        check_config("version: 2\nservices: [", 32)
    assert isinstance(info.value, InvalidConfig) and info.value.issues


def test_yaml_and_macro_problems_still_surface_as_their_public_errors() -> None:
    from qtap_async.config import ConfigValidationError, loads_config
    from qtap_async.rulekit import RuleSyntaxError, compile_rule

    with pytest.raises(ConfigValidationError, match="invalid YAML"):
        loads_config("a: [\n", "x.yaml")
    with pytest.raises(RuleSyntaxError) as info:
        compile_rule("broken", {"broken": "http.status =="})
    assert info.value.macro == "broken"


def test_a_malformed_dns_message_is_a_parse_error_record() -> None:
    from qtap_async.events.parse_error import ParseError
    from qtap_async.protocols.dns import parse_dns_datagram

    # A header that promises one question whose name runs past the end of the message.
    out = parse_dns_datagram(b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab")
    assert isinstance(out, ParseError) and out.reason.startswith("dns: ")
