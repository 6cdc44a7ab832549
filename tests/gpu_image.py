"""Run a script as it would run in the GPU machine's image: only torch, numpy, pillow and
prometheus-client (and what they require) importable from site-packages.

    python tests/gpu_image.py scripts/gpu_smoke.py --dry-run ...

Anything else installed here (kserve, grpcio, starlette, protobuf and its C extension,
tritonclient, ...) is refused with ModuleNotFoundError when it would be found in site-packages
only; modules found elsewhere (the standard library, the repository, the script's own kit)
import as usual, and so do the parts of a namespace package (google, opentelemetry) that the
kit provides.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import re
import runpy
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

# The GPU image, as the device tool describes it.
IMAGE_DISTRIBUTIONS = ("torch", "numpy", "pillow", "prometheus-client")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def required_closure(roots: Sequence[str]) -> set[str]:
    """The distributions `roots` need, transitively (requirements behind an extra left out)."""
    seen: set[str] = set()
    todo = [_canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            if "extra ==" in requirement.replace('"', "").replace("'", ""):
                continue
            match = _NAME.match(requirement)
            if match:
                todo.append(_canonical(match.group()))
    return seen


def importable_top_levels(distributions: set[str]) -> set[str]:
    """The top-level module names that those distributions provide."""
    return {
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if any(_canonical(owner) in distributions for owner in owners)
    }


class ImageOnly:
    """A meta-path finder refusing top-level modules from site-packages outside the image."""

    def __init__(self, allowed: set[str], site_packages: Path) -> None:
        self.allowed = allowed
        self.site_packages = site_packages

    def find_spec(self, name: str, path: Any = None, target: ModuleType | None = None) -> None:
        if name.partition(".")[0] in self.allowed:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        locations = list(spec.submodule_search_locations or []) if spec else []
        origins = [spec.origin] if spec and spec.origin else []
        found = [Path(where).resolve() for where in [*origins, *locations]]
        if found and all(where.is_relative_to(self.site_packages) for where in found):
            raise ModuleNotFoundError(f"No module named {name!r} in the GPU image", name=name)
        return None


def main(argv: list[str]) -> None:
    """Run argv[0] as __main__ with argv[1:], site-packages narrowed to the GPU image."""
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    allowed = importable_top_levels(required_closure(IMAGE_DISTRIBUTIONS))
    sys.meta_path.insert(0, ImageOnly(allowed, site_packages))
    sys.argv = list(argv)
    sys.path[0] = str(Path(argv[0]).resolve().parent)
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
