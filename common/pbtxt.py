"""config.pbtxt in and out, through Triton's own ModelConfig proto.

The generated `model_config_pb2` module ships inside tritonclient. Importing it the usual way
runs `tritonclient/grpc/__init__.py`, whose service protos register the protobuf package
`inference` a second time beside kserve's and fail; the config proto alone does not clash, so it
is loaded from its file without its package. Parsing is protobuf's `text_format` against that
schema: an unknown field, a wrong type or an unknown enum value is an error, never a default.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import text_format

_MODULE = "tritonclient.grpc.model_config_pb2"


class PbtxtError(ValueError):
    """config.pbtxt is not a valid Triton ModelConfig (says where and what was expected)."""


def _load_proto_module() -> ModuleType:
    """tritonclient's generated model_config_pb2, without running tritonclient.grpc's __init__."""
    loaded = sys.modules.get(_MODULE)
    if loaded is not None:  # tritonclient.grpc imported in this process (never beside kserve)
        return loaded
    package = importlib.util.find_spec("tritonclient")
    if package is None or not package.submodule_search_locations:
        raise ImportError("tritonclient is not installed: it provides Triton's ModelConfig proto")
    path = Path(next(iter(package.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location(_MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load Triton's ModelConfig proto from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Registered under its own name, so a later `import tritonclient.grpc` reuses it instead of
    # adding model_config.proto to the descriptor pool twice.
    sys.modules[_MODULE] = module
    return module


model_config_pb2 = _load_proto_module()


def parse(text: str, source: str) -> Any:
    """Parse config.pbtxt text into a ModelConfig message; raises PbtxtError naming the line."""
    message = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line = exc.GetLine()
        where = f"{source} line {line}" if line else source
        reason = str(exc).split(" : ", 1)[-1].rstrip(".")
        raise PbtxtError(
            f"{where}: {reason}; expected Triton's ModelConfig text format "
            "(https://github.com/triton-inference-server/common/blob/main/protobuf/"
            "model_config.proto)"
        ) from exc
    return message


def to_text(message: Any) -> str:
    """A ModelConfig message as config.pbtxt text."""
    return str(text_format.MessageToString(message))


def line_of(text: str, field: str, after: str | None = None) -> int | None:
    """The first line of `text` that sets `field` (at or after the first line holding `after`,
    when given), or None; for messages about a value that parsed but is not allowed."""
    setting = re.compile(rf"(^|[\s{{\[,;]){re.escape(field)}\s*[:{{\[]")
    seen = after is None
    for number, line in enumerate(text.splitlines(), start=1):
        code = line.split("#", 1)[0]
        seen = seen or (after is not None and after in code)
        if seen and setting.search(code):
            return number
    return None
