"""Qtap-style ``{{NAME}}`` templates for object keys and access URLs.

Key templates may use DIGEST (sha256 hex), SHARD (its first two hex digits), CONNECTION_ID and
TRANSACTION_ID. Keep keys a function of DIGEST alone to get de-duplication across transactions; either way a
retry of the same object writes the same key. URL templates may also use KEY, BUCKET, ENDPOINT, REGION and
(dir store) PATH.
"""

from __future__ import annotations

import re

from qtap_async.errors import ConfigError

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")

KEY_FIELDS = frozenset({"DIGEST", "SHARD", "CONNECTION_ID", "TRANSACTION_ID"})
URL_FIELDS = KEY_FIELDS | {"KEY", "BUCKET", "ENDPOINT", "REGION", "PATH"}


class Template:
    def __init__(self, text: str, allowed: frozenset[str], what: str) -> None:
        self.text = text
        self._parts: list[str] = []  # literal, name, literal, name, ..., literal
        pos = 0
        for m in _PLACEHOLDER.finditer(text):
            name = m.group(1).upper()
            if name not in allowed:
                known = ", ".join(sorted(allowed))
                raise ConfigError(f"{what}: unknown placeholder {{{{{m.group(1)}}}}} (known: {known})")
            self._parts += [text[pos : m.start()], name]
            pos = m.end()
        self._parts.append(text[pos:])
        self.fields = frozenset(self._parts[1::2])

    def render(self, values: dict[str, str]) -> str:
        out = []
        for i, part in enumerate(self._parts):
            out.append(values[part] if i % 2 else part)
        return "".join(out)
