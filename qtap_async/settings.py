"""What every settings Struct shares: the ``Settings`` base and the one secret type.

The config (``qtap_async.config``), each store (``qtap_async/sinks/*.py``) and each plugin
(``qtap_async/plugins/*.py``) declare their settings as Structs on ``Settings``; this module imports
nothing of qtap_async but the error tree, so any of them can use it without an import cycle.

A secret is a value kept out of the file::

    token: {type: env, value: PULSE_TOKEN}          # an environment variable of the agent
    token: {type: file, value: /run/secrets/pulse}  # a file's content (trailing newline dropped)
    token: {type: text, value: abc}                 # inline (validate warns about it)

Where a store takes a secret, a bare string means the same as ``{type: text, value: ...}``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal, TypeAlias

import msgspec
import msgspec.structs

from qtap_async.errors import ConfigError

__all__ = ["FieldPath", "Secret", "SecretOrText", "Settings", "find_secrets", "resolve"]

#: A field's place in a document: keys and list indices from the top.
FieldPath: TypeAlias = tuple[str | int, ...]

#: Longest secret file read: a token or a key, not a file someone pointed at by mistake.
MAX_SECRET_FILE_BYTES = 64 << 10


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every settings Struct: immutable, and a misspelt key is an error, not a silent default.

    ``field_hints`` maps a field name people write by mistake (often Qtap's) to the words that explain
    it; the config's error messages add them to "unknown field".
    """

    field_hints: ClassVar[Mapping[str, str]] = {}


class Secret(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A value read when it is needed: an environment variable (``env``), a file (``file``) or the text
    itself (``text``)."""

    type: Literal["env", "file", "text"]
    value: str

    def resolve(self, what: str = "secret", environ: Mapping[str, str] | None = None) -> str:
        """The secret itself. Raises ConfigError naming ``what`` and the variable or file when it cannot
        be read."""
        if self.type == "text":
            return self.value
        if self.type == "env":
            env = os.environ if environ is None else environ
            got = env.get(self.value)
            if got is None:
                raise ConfigError(f"{what}: environment variable {self.value} is not set")
            return got
        try:
            with open(self.value, "rb") as f:
                data = f.read(MAX_SECRET_FILE_BYTES + 1)
        except FileNotFoundError:
            raise ConfigError(f"{what}: secret file {self.value} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read secret file {self.value}: {exc.strerror or exc}") from None
        if len(data) > MAX_SECRET_FILE_BYTES:
            raise ConfigError(f"{what}: secret file {self.value} is larger than {MAX_SECRET_FILE_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{what}: secret file {self.value} is not UTF-8 text (byte {exc.start})") from None
        # `echo token > file` and Kubernetes secrets end with a newline that is not part of the secret.
        return text.removesuffix("\n").removesuffix("\r")


#: What a store's secret field takes: a Secret, or a bare string meaning ``{type: text, value: ...}``.
SecretOrText: TypeAlias = Secret | str


def resolve(secret: SecretOrText | None, what: str) -> str | None:
    """The value of a secret (or of a bare string); None stays None."""
    if secret is None or isinstance(secret, str):
        return secret
    return secret.resolve(what)


def find_secrets(value: Any, path: FieldPath = ()) -> Iterator[tuple[FieldPath, Secret]]:
    """Every Secret inside ``value`` (Structs, lists, dicts), with its path of encoded field names."""
    if isinstance(value, Secret):
        yield path, value
    elif isinstance(value, msgspec.Struct):
        for f in msgspec.structs.fields(value):
            yield from find_secrets(getattr(value, f.name), (*path, f.encode_name))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from find_secrets(item, (*path, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from find_secrets(item, (*path, str(key)))
