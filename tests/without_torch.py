"""Run a module with torch made unimportable, as in the transformer image (which has none).

python tests/without_torch.py -m transformer --help
python tests/without_torch.py -c "import transformer.model"
"""

from __future__ import annotations

import importlib.abc
import runpy
import sys
from collections.abc import Sequence
from types import ModuleType


class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        if fullname == "torch" or fullname.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked: no torch here)")
        return None


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in ("-m", "-c"):
        raise SystemExit("usage: without_torch.py -m MODULE [ARGS...] | -c CODE")
    sys.meta_path.insert(0, _NoTorch())
    if sys.argv[1] == "-c":
        exec(compile(sys.argv[2], "<without_torch -c>", "exec"), {"__name__": "__main__"})
        return
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
