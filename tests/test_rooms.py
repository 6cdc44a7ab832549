"""The layout holds: which room imports which, no cycle, what each image and `.[edge]` carry.

Read from the source (harness/imports.py walks every import, function-level ones too) and from
the installed distributions' metadata, so a stray import or dependency fails here, not in a
container build or on an edge device.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from harness.imports import cycles, graph, reachable
from harness.servers import ROOT

EDGES = graph()


def rooms_imported(room: str) -> dict[str, set[str]]:
    """{other top-level room: the modules of `room` that import it}."""
    found: dict[str, set[str]] = {}
    for module, targets in EDGES.items():
        if module.split(".")[0] != room:
            continue
        for target in targets:
            other = target.split(".")[0]
            if other != room:
                found.setdefault(other, set()).add(module)
    return found


def test_no_module_import_cycle() -> None:
    assert cycles(EDGES) == []


@pytest.mark.parametrize(
    ("room", "allowed"),
    [
        # The serving machinery and the domain stand on nothing but each other's contract.
        ("common", set()),
        ("vision", {"common"}),  # the model repository's error type
        ("runtime", {"common"}),
        ("groundtruth", {"common"}),
        ("modelbuild", {"common", "runtime", "vision"}),
        # The two servers side by side: neither imports the other.
        ("predictor", {"common", "runtime"}),
        ("transformer", {"common", "vision", "groundtruth"}),
        # Edge, batch and bench use the domain and the engines, not a server.
        ("edge", {"common", "runtime", "vision"}),
        ("batch", {"common", "runtime", "vision", "groundtruth"}),
        ("bench", {"common", "runtime", "vision", "modelbuild", "harness"}),
        ("harness", {"common", "modelbuild"}),
        ("rollout", {"common"}),
    ],
)
def test_each_room_imports_only_the_rooms_below_it(room: str, allowed: set[str]) -> None:
    extra = {
        other: sorted(by) for other, by in rooms_imported(room).items() if other not in allowed
    }
    assert extra == {}, f"{room} imports {extra}"


def test_the_tests_import_nothing_from_bench() -> None:
    assert "bench" not in rooms_imported("tests"), rooms_imported("tests")["bench"]


@pytest.mark.parametrize(
    ("entry", "forbidden"),
    [
        ("vision", ("kserve", "torch", "prometheus_client")),
        ("edge", ("kserve", "torch", "prometheus_client")),
        ("groundtruth.log", ("kserve", "torch", "prometheus_client")),
        ("groundtruth.accuracy", ("kserve", "torch", "prometheus_client")),
        ("runtime.onnx_engine", ("kserve", "torch")),
        ("runtime.openvino_engine", ("kserve", "torch")),
        ("transformer.__main__", ("torch",)),
    ],
)
def test_what_a_room_reaches_never_imports_the_heavy_frameworks(
    entry: str, forbidden: tuple[str, ...]
) -> None:
    """Static, over every first-party module `entry` reaches (function-level imports too)."""
    third_party: dict[str, set[str]] = {}
    for module in reachable(EDGES, entry):
        path = module_path(module)
        for name in imported_names(path):
            top = name.split(".")[0]
            if top in forbidden:
                third_party.setdefault(top, set()).add(module)
    assert third_party == {}, f"{entry} reaches {third_party}"


def module_path(module: str) -> Path:
    """The file of a first-party module."""
    base = ROOT / module.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def imported_names(path: Path) -> set[str]:
    """Every name `path` imports (absolute; first- or third-party)."""
    from harness.imports import imports_of

    return imports_of(path)


@pytest.mark.parametrize(
    ("image", "entry"),
    [
        ("predictor", "predictor.__main__"),
        ("transformer", "transformer.__main__"),
        ("batch", "batch.__main__"),
    ],
)
def test_each_dockerfile_copies_every_package_its_entry_point_reaches(
    image: str, entry: str
) -> None:
    dockerfile = (ROOT / "docker" / f"{image}.Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) /tmp/src/\1$", dockerfile, re.MULTILINE))
    needed = {module.split(".")[0] for module in reachable(EDGES, entry)}
    assert needed <= copied, f"{image}.Dockerfile lacks {sorted(needed - copied)}"
    assert copied <= needed, f"{image}.Dockerfile copies unused {sorted(copied - needed)}"


def requirement_closure(requirement: str) -> set[str]:
    """The distributions `pip install <requirement>` would bring, resolved offline over the
    installed distributions' own metadata (this environment has every one of them)."""
    seen: set[str] = set()
    todo = [(Requirement(requirement), frozenset[str]())]
    while todo:
        wanted, _ = todo.pop()
        name = wanted.name.lower().replace("_", "-")
        key = f"{name}[{','.join(sorted(wanted.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for line in metadata.requires(wanted.name) or []:
            child = Requirement(line)
            environment = [{"extra": extra} for extra in wanted.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(e) for e in environment):
                todo.append((child, frozenset()))
    return {key.split("[")[0] for key in seen}


def test_pip_install_edge_brings_neither_torch_nor_kserve() -> None:
    edge = requirement_closure("kserve-image-classifier[edge]")
    assert {"onnxruntime", "numpy", "pillow", "tritonclient"} <= edge, sorted(edge)
    assert not edge & {"torch", "kserve", "prometheus-client", "fastapi"}, sorted(edge)
    served = requirement_closure("kserve-image-classifier[serve]")
    assert "kserve" in served and "torch" not in served  # the check can tell the difference
