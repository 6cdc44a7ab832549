"""Run a server's `main(argv)` with its flags kept out of `sys.argv`.

kserve 0.21 parses `sys.argv` when it is imported, so a flag that reaches a server only through
`main(argv)` (scripts/serve.py, a test) must still take effect: common/kserve_compat.py sees to
it, and tests/test_kserve_compat.py uses this launcher to prove it.

python tests/argv_hidden.py -m transformer --max_request_bytes 65536 ...
"""

from __future__ import annotations

import importlib
import sys


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        raise SystemExit("usage: argv_hidden.py -m MODULE [ARGS...]")
    module, argv = sys.argv[2], sys.argv[3:]
    sys.argv = [module]  # what kserve will parse at import: no flags at all
    entry = importlib.import_module(f"{module}.__main__")
    return int(entry.main(argv))


if __name__ == "__main__":
    sys.exit(main())
