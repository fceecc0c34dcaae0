"""The syntax tree of a rule expression: small frozen dataclasses produced by the parser."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- operands -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """A field read from the context; ``name`` is canonical (aliases resolved, header names lowercased)."""

    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Literal:
    """A string or number value."""

    value: str | int | float
    pos: int


@dataclass(frozen=True, slots=True)
class StatusClass:
    """``5xx``: any number in [digit*100, digit*100 + 100)."""

    digit: int
    pos: int


@dataclass(frozen=True, slots=True)
class NetworkLit:
    """A CIDR network (or a single address as /32 or /128), only after ``in``."""

    network: Network
    text: str
    pos: int


@dataclass(frozen=True, slots=True)
class Pattern:
    """A regular expression, compiled once at parse time; only after ``matches``."""

    regex: re.Pattern[str]
    pos: int


Operand = Field | Literal | StatusClass
InItem = Literal | StatusClass | NetworkLit


# -- conditions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Const:
    """``true`` or ``false``."""

    value: bool
    pos: int


@dataclass(frozen=True, slots=True)
class Truthy:
    """A field on its own: true when present and neither "" nor 0."""

    field: Field


@dataclass(frozen=True, slots=True)
class MacroRef:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node
    pos: int


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    """``left op right`` for ==, <, <=, >, >=, contains, startswith, endswith.

    ``!=`` is ``==`` with ``negated``; ``not contains`` and friends likewise.
    """

    op: str
    left: Operand
    right: Operand
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class Match:
    left: Field
    pattern: Pattern
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class In:
    left: Field
    items: tuple[InItem, ...]
    negated: bool
    pos: int


Node = Const | Truthy | MacroRef | Not | And | Or | Compare | Match | In
