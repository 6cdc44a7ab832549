"""Run a module with torch made unimportable, as in the transformer image (which has none).

python tests/without_torch.py -m transformer --help
python tests/without_torch.py -c "import transformer.model"
python tests/without_torch.py --also kserve -m edge ...   # block kserve too (the edge install)
"""

from __future__ import annotations

import importlib.abc
import runpy
import sys
from collections.abc import Sequence
from types import ModuleType


class _Blocked(importlib.abc.MetaPathFinder):
    def __init__(self, packages: set[str]) -> None:
        self.packages = packages

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        if fullname.split(".")[0] in self.packages:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (blocked: no {fullname.split('.')[0]} here)"
            )
        return None


def main() -> None:
    blocked = {"torch"}
    while len(sys.argv) > 2 and sys.argv[1] == "--also":
        blocked.add(sys.argv[2])
        del sys.argv[1:3]
    if len(sys.argv) < 3 or sys.argv[1] not in ("-m", "-c"):
        raise SystemExit(
            "usage: without_torch.py [--also PACKAGE]... -m MODULE [ARGS...] | -c CODE"
        )
    sys.meta_path.insert(0, _Blocked(blocked))
    if sys.argv[1] == "-c":
        exec(compile(sys.argv[2], "<without_torch -c>", "exec"), {"__name__": "__main__"})
        return
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
