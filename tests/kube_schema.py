"""A strict structural check of Kubernetes and KServe objects against the types installed here.

The kserve SDK's generated models (`kserve.models.V1beta1*`) and the `kubernetes` package's
(`kubernetes.client.models.V1*`) each declare their fields: `attribute_map` (Python name to
JSON key) and `openapi_types` (Python name to type: a model name, `list[...]`, `dict(str, ...)`,
`str`, `int`, `bool`, `object`). Walking a rendered manifest along them finds any field that is
not declared (a misspelling, a field of another version) and any value of the wrong JSON type,
anywhere in the object, with its path. This is what the real CRDs' structural schemas enforce
at `kubectl apply` (they are generated from the same Go types), without needing the CRD files.
"""

from __future__ import annotations

import re
from typing import Any

import kserve
import kubernetes.client

# Type names that are not models: Kubernetes quantities are strings or numbers in YAML.
_QUANTITIES = frozenset({"ResourceQuantity", "V1beta1MetricQuantity"})
_SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
    "V1Time": (str,),
}
_LIST = re.compile(r"(?:list|List)\[(.+)\]")
_DICT = re.compile(r"(?:dict\(str, |Dict\[str, )(.+)[\])]")
# kserve's names for the Kubernetes types it embeds: K8sIoApi<Group><Version><Kind>.
_K8S_ALIAS = re.compile(r"K8sIoApi[A-Z][a-z]+(V\d+(?:(?:alpha|beta)\d+)?)(\w+)")


def model_class(name: str) -> type | None:
    """The generated model class a type name stands for, in kserve's models or Kubernetes'."""
    for module in (kserve.models, kubernetes.client.models):
        found = getattr(module, name, None)
        if isinstance(found, type):
            return found
    alias = _K8S_ALIAS.fullmatch(name)
    return model_class("".join(alias.groups())) if alias else None


def problems(value: Any, type_name: str, path: str = "") -> list[str]:
    """Every undeclared field and wrongly typed value in `value`, read as `type_name`."""
    if value is None or type_name == "object":
        return []
    if type_name in _QUANTITIES:
        ok = isinstance(value, str | int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected a quantity, got {value!r}"]
    if type_name in _SCALARS:
        wanted = _SCALARS[type_name]
        ok = isinstance(value, wanted) and (bool in wanted or not isinstance(value, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {value!r}"]
    if match := _LIST.fullmatch(type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r:.60}"]
        return [p for i, item in enumerate(value) for p in problems(item, match[1], f"{path}[{i}]")]
    if match := _DICT.fullmatch(type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a map, got {value!r:.60}"]
        return [p for k, item in value.items() for p in problems(item, match[1], f"{path}.{k}")]
    cls = model_class(type_name)
    if cls is None:
        return [f"{path}: type {type_name} is not among the installed models"]
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({type_name}), got {value!r:.60}"]
    fields = {key: attr for attr, key in cls.attribute_map.items()}  # type: ignore[attr-defined]
    found: list[str] = []
    for key, item in value.items():
        if key not in fields:
            found.append(f"{path}.{key}: not a field of {type_name} (known: {sorted(fields)})")
            continue
        found += problems(item, cls.openapi_types[fields[key]], f"{path}.{key}")  # type: ignore[attr-defined]
    return found
