"""Labels as clients send them, checked: which prediction each names and which class it says.

A label names its subject one of three ways: a request's image (`id`, and `index`, default 0),
an image's content (`sha256`), or a batch image key (`image_key`, `python -m batch labels`
only). Its class is a class id (an integer) or a class name from the model's labels. A body is
checked whole before anything is written: one bad item refuses the body, and the error says
which items were wrong and why (the first few).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.ids import VALID_REQUEST_ID

from .schema import BY_ID, BY_KEY, BY_SHA256

MAX_LABELS = 10_000  # items in one POST: about 1 MB of JSON, one transaction
MAX_IMAGE_KEY_LENGTH = 1024  # the predictions table's image_key column
ERRORS_SHOWN = 5  # a refused body names its first few bad items
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
ITEM_EXAMPLE = '{"id": "<request id>", "index": 0, "label": 207}'
LABEL_EXAMPLE = f'[{ITEM_EXAMPLE}, {{"sha256": "<hex>", "label": "tench"}}]'


class LabelError(ValueError):
    """A label body is not what the labels API takes (the server answers 400 with this)."""


@dataclass(frozen=True)
class Label:
    """One true class for one subject."""

    source: str  # BY_ID, BY_SHA256 or BY_KEY
    class_id: int
    request_id: str | None = None
    image_index: int | None = None
    sha256: str | None = None
    image_key: str | None = None

    @property
    def subject(self) -> str:
        """The labels table's key: a later label of the same subject replaces this one."""
        if self.source == BY_ID:
            return f"id:{self.request_id}#{self.image_index}"
        if self.source == BY_SHA256:
            return f"sha256:{self.sha256}"
        return f"key:{self.image_key}"

    def describe(self) -> dict[str, object]:
        """The subject as the client named it (for per-item answers)."""
        if self.source == BY_ID:
            return {"id": self.request_id, "index": self.image_index}
        if self.source == BY_SHA256:
            return {"sha256": self.sha256}
        return {"image_key": self.image_key}


class ClassNames:
    """The model's classes: ids 0..N-1 and their names (labels.txt), read once."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self._by_name: dict[str, list[int]] = {}
        for class_id, name in enumerate(self.names):
            self._by_name.setdefault(name, []).append(class_id)
            folded = name.casefold()
            if folded != name:
                self._by_name.setdefault(folded, []).append(class_id)

    def __len__(self) -> int:
        return len(self.names)

    def resolve(self, value: object) -> int:
        """The class id of a label value (an id, or a name); raises LabelError naming it."""
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise LabelError(
                f"label {value!r} ({type(value).__name__}): expected a class id (integer 0 to "
                f"{len(self.names) - 1}) or a class name (string)"
            )
        if isinstance(value, int):
            if not 0 <= value < len(self.names):
                raise LabelError(
                    f"label {value}: no such class id, expected 0 to {len(self.names) - 1}"
                )
            return value
        ids = self._by_name.get(value) or self._by_name.get(value.casefold())
        if not ids:
            raise LabelError(f"label {value!r}: no class of that name in the model's labels")
        if len(set(ids)) > 1:
            raise LabelError(
                f"label {value!r}: {len(set(ids))} classes have that name (ids "
                f"{sorted(set(ids))}); send the class id instead"
            )
        return ids[0]


def parse_labels(body: object, classes: ClassNames, allow_image_key: bool = False) -> list[Label]:
    """Every label of a JSON body (a list of objects); raises LabelError naming the bad items."""
    if not isinstance(body, list):
        raise LabelError(
            f"expected a JSON list of labels, e.g. {LABEL_EXAMPLE}; got {type(body).__name__}"
        )
    if not body:
        raise LabelError(f"an empty list: expected 1 to {MAX_LABELS} labels")
    if len(body) > MAX_LABELS:
        raise LabelError(f"{len(body)} labels in one body, expected at most {MAX_LABELS}")
    labels: list[Label] = []
    errors: list[str] = []
    for position, item in enumerate(body):
        try:
            labels.append(parse_label(item, classes, allow_image_key))
        except LabelError as exc:
            errors.append(f"item {position}: {exc}")
    if errors:
        raise refused(f"{len(errors)} of {len(body)} labels refused", errors)
    return labels


def refused(what: str, errors: list[str]) -> LabelError:
    """The error of a body (or file) refused whole: `what`, then its first few bad items."""
    shown = "; ".join(errors[:ERRORS_SHOWN])
    more = f" (and {len(errors) - ERRORS_SHOWN} more)" if len(errors) > ERRORS_SHOWN else ""
    return LabelError(f"{what}, none stored: {shown}{more}")


def parse_label(item: object, classes: ClassNames, allow_image_key: bool = False) -> Label:
    """One label object; raises LabelError saying what was wrong."""
    if not isinstance(item, Mapping):
        raise LabelError(f"{type(item).__name__}: expected an object like {ITEM_EXAMPLE}")
    subjects = ["id", "sha256"] + (["image_key"] if allow_image_key else [])
    allowed = {*subjects, "index", "label"}
    unknown = sorted(str(k) for k in item if k not in allowed)
    if unknown:
        raise LabelError(f"unknown field(s) {unknown}, expected {sorted(allowed)}")
    named = [k for k in subjects if k in item]
    if len(named) != 1:
        raise LabelError(f"expected exactly one of {subjects}, got {named or 'none'}")
    if "label" not in item:
        raise LabelError('no "label" (a class id or a class name)')
    class_id = classes.resolve(item["label"])
    kind = named[0]
    if kind != "id" and "index" in item:
        raise LabelError(f'"index" goes with "id" only, not with "{kind}"')
    if kind == "id":
        request_id = item["id"]
        if not isinstance(request_id, str) or not VALID_REQUEST_ID.fullmatch(request_id):
            raise LabelError(
                f"id {str(request_id)[:80]!r}: expected the request id the transformer answered "
                "with (its x-request-id header): 1 to 128 of A-Z a-z 0-9 . _ : / + = @ -"
            )
        index = item.get("index", 0)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise LabelError(f"index {index!r}: expected the image's position (an integer >= 0)")
        return Label(BY_ID, class_id, request_id=request_id, image_index=index)
    if kind == "sha256":
        digest = item["sha256"]
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise LabelError(
                f"sha256 {str(digest)[:80]!r}: expected 64 hexadecimal digits (the SHA-256 of "
                "the image file's bytes)"
            )
        return Label(BY_SHA256, class_id, sha256=digest.lower())
    key = item["image_key"]
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_IMAGE_KEY_LENGTH:
        raise LabelError(
            f"image_key {str(key)[:80]!r}: expected the batch job's key (a path, 1 to "
            f"{MAX_IMAGE_KEY_LENGTH} characters)"
        )
    return Label(BY_KEY, class_id, image_key=key)
