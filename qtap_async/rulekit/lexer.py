"""Tokenizer of the rule language: text in, a list of positioned tokens out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from qtap_async.rulekit.errors import RuleSyntaxError

# Token kinds.
IDENT: Final = "ident"  # a field (dotted) or a macro name (bare)
MACRO: Final = "macro"  # $name
STRING: Final = "string"
REGEX: Final = "regex"  # /pattern/
NUMBER: Final = "number"
STATUS: Final = "status"  # 5xx
IP: Final = "ip"  # unquoted IPv4 address or network: 10.0.0.1, 10.0.0.0/8
OP: Final = "op"  # == != < <= > >= ( ) [ ] ,
KEYWORD: Final = "keyword"
EOF_: Final = "eof"

#: Keywords (matched case-insensitively) and what they stand for.
KEYWORDS: Final[dict[str, str]] = {
    "and": "and",
    "or": "or",
    "not": "not",
    "in": "in",
    "matches": "matches",
    "contains": "contains",
    "startswith": "startswith",
    "starts_with": "startswith",
    "endswith": "endswith",
    "ends_with": "endswith",
    "true": "true",
    "false": "false",
    "eq": "==",
    "ne": "!=",
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
}

#: Operator spellings and their canonical form.
_SYMBOLS: Final[dict[str, str]] = {
    "==": "==",
    "!=": "!=",
    "<=": "<=",
    ">=": ">=",
    "&&": "and",
    "||": "or",
    "<": "<",
    ">": ">",
    "!": "not",
    "(": "(",
    ")": ")",
    "[": "[",
    "]": "]",
    ",": ",",
}

_COMPARISONS: Final = frozenset({"==", "!=", "<", "<=", ">", ">="})
_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*")
_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IPV4_RE: Final = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,3})?")
_STATUS_RE: Final = re.compile(r"[1-9][xX][xX]")
_NUMBER_RE: Final = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WORD_CHAR: Final = re.compile(r"[A-Za-z0-9_.]")
_ESCAPES: Final[dict[str, str]] = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    value: object  # str for most kinds, int|float for NUMBER, int (the digit) for STATUS
    pos: int  # 0-based start
    end: int  # 0-based end (exclusive)
    # For STRING and REGEX: the source index of each character of ``value`` (to place regex errors).
    offsets: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.kind == EOF_:
            return "end of expression"
        if self.kind == STRING:
            return f"string {self.value!r}"
        if self.kind == KEYWORD:
            return f"'{self.value}'"
        if self.kind == OP:
            return f"'{self.value}'"
        if self.kind == MACRO:
            return f"'${self.value}'"
        if self.kind == REGEX:
            return f"regex /{self.value}/"
        if self.kind == STATUS:
            return f"'{self.value}xx'"
        return f"'{self.value}'"


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens, ending with an EOF token. Raises RuleSyntaxError."""
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
            continue
        if c == '"' or c == "'":
            tokens.append(_string(text, i))
            i = tokens[-1].end
            continue
        if c == "/":
            tokens.append(_regex(text, i))
            i = tokens[-1].end
            continue
        if c == "$":
            m = _NAME_RE.match(text, i + 1)
            if m is None:
                raise RuleSyntaxError("expected a macro name after '$'", text, i + 1)
            tokens.append(Token(MACRO, m.group(), i, m.end()))
            i = m.end()
            continue
        if c.isascii() and (c.isdigit() or (c == "-" and i + 1 < n and text[i + 1].isdigit())):
            tokens.append(_number_like(text, i))
            i = tokens[-1].end
            continue
        if c.isascii() and (c.isalpha() or c == "_"):
            m = _IDENT_RE.match(text, i)
            assert m is not None
            word = m.group()
            if "." not in word and word.lower() in KEYWORDS:
                value = KEYWORDS[word.lower()]
                kind = OP if value in _COMPARISONS else KEYWORD
                tokens.append(Token(kind, value, i, m.end()))
            else:
                tokens.append(Token(IDENT, word, i, m.end()))
            i = m.end()
            continue
        two = text[i : i + 2]
        if two in _SYMBOLS:
            tokens.append(_symbol(_SYMBOLS[two], i, i + 2))
            i += 2
            continue
        if c in _SYMBOLS:
            tokens.append(_symbol(_SYMBOLS[c], i, i + 1))
            i += 1
            continue
        if c == "=":
            raise RuleSyntaxError("unexpected '='; use '==' to compare", text, i + 1)
        raise RuleSyntaxError(f"unexpected character {c!r}", text, i + 1)
    tokens.append(Token(EOF_, "", n, n))
    return tokens


def _symbol(value: str, start: int, end: int) -> Token:
    kind = KEYWORD if value in ("and", "or", "not") else OP
    return Token(kind, value, start, end)


def _string(text: str, start: int) -> Token:
    quote = text[start]
    chars: list[str] = []
    offsets: list[int] = []
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == quote:
            return Token(STRING, "".join(chars), start, i + 1, tuple(offsets))
        if c == "\\":
            if i + 1 >= n:
                break
            nxt = text[i + 1]
            if nxt in _ESCAPES:
                chars.append(_ESCAPES[nxt])
                offsets.append(i)
            else:
                # Unknown escapes keep their backslash, so regexes read naturally: "api\.example".
                chars.append("\\")
                offsets.append(i)
                chars.append(nxt)
                offsets.append(i + 1)
            i += 2
            continue
        chars.append(c)
        offsets.append(i)
        i += 1
    raise RuleSyntaxError("unterminated string", text, start + 1)


def _regex(text: str, start: int) -> Token:
    chars: list[str] = []
    offsets: list[int] = []
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "/":
            return Token(REGEX, "".join(chars), start, i + 1, tuple(offsets))
        if c == "\\" and i + 1 < n and text[i + 1] == "/":
            chars.append("/")
            offsets.append(i + 1)
            i += 2
            continue
        if c == "\\" and i + 1 < n:
            chars.append(c)
            offsets.append(i)
            chars.append(text[i + 1])
            offsets.append(i + 1)
            i += 2
            continue
        chars.append(c)
        offsets.append(i)
        i += 1
    raise RuleSyntaxError("unterminated regex: missing closing '/'", text, start + 1)


def _number_like(text: str, start: int) -> Token:
    if text[start] != "-":
        m = _IPV4_RE.match(text, start)
        if m is not None and not _continues(text, m.end()):
            return Token(IP, m.group(), start, m.end())
        m = _STATUS_RE.match(text, start)
        if m is not None and not _continues(text, m.end()):
            return Token(STATUS, int(text[start]), start, m.end())
    m = _NUMBER_RE.match(text, start)
    if m is None or _continues(text, m.end()):
        end = start + 1
        while end < len(text) and _WORD_CHAR.match(text[end]):
            end += 1
        raise RuleSyntaxError(f"invalid number {text[start:end]!r}", text, start + 1)
    word = m.group()
    if len(word) > 40:
        raise RuleSyntaxError(f"number out of range {word[:20]!r}...", text, start + 1)
    value: int | float
    if any(ch in word for ch in ".eE"):
        value = float(word)
        if value != value or value in (float("inf"), float("-inf")):
            raise RuleSyntaxError(f"number out of range {word!r}", text, start + 1)
    else:
        value = int(word)
    return Token(NUMBER, value, start, m.end())


def _continues(text: str, end: int) -> bool:
    """Whether a number-like token at ``end`` runs straight into more word characters."""
    return end < len(text) and bool(_WORD_CHAR.match(text[end]))
