"""Where the Triton install lives: the venv `make triton` builds from PyPI's nvidia-pytriton.

The wheel bundles a real `tritonserver` with the python backend only, its shared libraries
(`nvidia_pytriton.libs/`) and one python-backend stub per Python version. The stub must sit
beside `libtriton_python.so` in the backend directory Triton is given, so `backend_directory`
assembles one (as PyTriton does before it starts Triton); the stub links the interpreter's
libpython3.x, so the venv is made with Debian's python3.11, whose libpython is installed. The
stub's Python is the first `python3` on PATH: `environment` puts the venv's bin first, so the
model finds the venv's numpy and onnxruntime.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from harness.servers import ROOT

DEFAULT_VENV = ROOT / ".venv-triton"
STUB = "triton_python_backend_stub"
PYTHON_BACKEND = "python"


class TritonInstallError(RuntimeError):
    """The Triton venv is absent or lacks a part tritonserver needs."""


@dataclass(frozen=True)
class TritonInstall:
    """The parts of one nvidia-pytriton install that starting tritonserver needs."""

    venv: Path
    package: Path  # site-packages/pytriton
    python_version: str  # "3.11": the stub to use

    @property
    def server_dir(self) -> Path:
        """The wheel's tritonserver tree (bin, backends, caches, stubs)."""
        return self.package / "tritonserver"

    @property
    def binary(self) -> Path:
        """The tritonserver executable."""
        return self.server_dir / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        """The wheel's python backend (libtriton_python.so and its utils, no stub)."""
        return self.server_dir / "backends" / PYTHON_BACKEND

    @property
    def stub(self) -> Path:
        """The python-backend stub built for the venv's Python."""
        return self.server_dir / "python_backend_stubs" / self.python_version / STUB

    @property
    def libraries(self) -> Path:
        """The shared libraries auditwheel vendored beside the package."""
        return self.package.parent / "nvidia_pytriton.libs"

    @classmethod
    def find(cls, venv: Path = DEFAULT_VENV) -> TritonInstall:
        """The install in `venv`; raises TritonInstallError saying what is missing (run
        `make triton`)."""
        packages = sorted(venv.glob("lib/python3.*/site-packages/pytriton"))
        if not packages:
            raise TritonInstallError(
                f"no nvidia-pytriton in {venv} (expected {venv}/lib/python3.X/site-packages/"
                "pytriton); `make triton` installs it"
            )
        package = packages[-1]
        found = cls(venv, package, package.parent.parent.name.removeprefix("python"))
        parts = (found.binary, found.stub, found.libraries, found.python_backend)
        missing = [str(path) for path in (*parts, venv / "bin" / "python3") if not path.exists()]
        if missing:
            raise TritonInstallError(
                f"the Triton install in {venv} lacks {missing}; `make triton` rebuilds it"
            )
        return found

    def backend_directory(self, target: Path) -> Path:
        """A backend directory under `target` holding the python backend with its stub beside
        it (copies: a few MB), for tritonserver's --backend-directory."""
        backends = target / "backends"
        python = backends / PYTHON_BACKEND
        if python.exists():
            shutil.rmtree(python)
        shutil.copytree(self.python_backend, python, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(self.stub, python / STUB)
        return backends

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's) with the venv's bin first on PATH and the vendored
        libraries on LD_LIBRARY_PATH."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = os.pathsep.join(filter(None, [str(self.venv / "bin"), env.get("PATH")]))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [str(self.libraries), env.get("LD_LIBRARY_PATH")])
        )
        # The stub's interpreter must not pick up this project's venv or sources.
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(name, None)
        return env

    def versions(self) -> dict[str, str | None]:
        """The installed nvidia-pytriton, onnxruntime and numpy versions (None when absent)."""
        site = [str(self.package.parent)]

        def version(name: str) -> str | None:
            found = next(iter(metadata.distributions(name=name, path=site)), None)
            return None if found is None else found.version

        return {name: version(name) for name in ("nvidia-pytriton", "onnxruntime", "numpy")}
