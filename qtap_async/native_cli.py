"""``python -m qtap_async.native_cli [build|clean|status]``: the mypyc builds of qtap_async/native.py.

A module of its own because ``qtap_async`` imports ``native`` when it is imported (its finder must be in
place before any parser is), and ``python -m`` of a module already imported runs it twice.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from qtap_async import native


def main(argv: Sequence[str]) -> int:
    cmd = argv[0] if argv else "status"
    if cmd == "build":
        native.build()
    elif cmd == "clean":
        native.clean()
    elif cmd != "status":
        sys.stderr.write("usage: python -m qtap_async.native_cli [build|clean|status]\n")
        return 2
    for m, how in native.status().items():
        sys.stdout.write(f"{m}: {how}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
