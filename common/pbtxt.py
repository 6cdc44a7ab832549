"""A reader for the subset of protobuf text format that Triton's config.pbtxt uses.

tritonclient ships the real ModelConfig proto, but it cannot be imported beside kserve (both
register the protobuf package `inference`), so the servers parse the file with this instead.
Every message becomes a dict from field name to a list of values (fields can repeat); scalars are
str, int, float or bool, enum values are kept as their names.
"""

from __future__ import annotations

import re
from typing import Any

Message = dict[str, list[Any]]

_TOKEN = re.compile(
    r"""
    \s+ | \#[^\n]*                                  # whitespace and comments: skipped
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
    | (?P<punct>[{}\[\]:,;<>])
    """,
    re.VERBOSE,
)


class PbtxtError(ValueError):
    """The text is not valid protobuf text format (says where and what was found)."""


def _tokens(text: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            line = text.count("\n", 0, pos) + 1
            raise PbtxtError(f"line {line}: unexpected character {text[pos]!r}")
        if match.lastgroup is not None:
            line = text.count("\n", 0, pos) + 1
            tokens.append((match.lastgroup, match.group(match.lastgroup), line))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise PbtxtError(f"unexpected end of text, expected {expected or 'a value'}")
        if expected is not None and token[1] != expected:
            raise PbtxtError(f"line {token[2]}: expected {expected!r}, found {token[1]!r}")
        self.i += 1
        return token

    def message(self, closing: str | None) -> Message:
        fields: Message = {}
        while True:
            token = self.peek()
            if token is None:
                if closing is not None:
                    raise PbtxtError(f"unexpected end of text, expected {closing!r}")
                return fields
            if closing is not None and token[1] == closing:
                self.i += 1
                return fields
            kind, name, line = self.take()
            if kind != "ident":
                raise PbtxtError(f"line {line}: expected a field name, found {name!r}")
            fields.setdefault(name, []).extend(self.field_values())
            following = self.peek()
            if following is not None and following[1] in (",", ";"):
                self.i += 1

    def field_values(self) -> list[Any]:
        token = self.peek()
        if token is not None and token[1] == ":":
            self.i += 1
            token = self.peek()
        if token is not None and token[1] == "[":
            self.i += 1
            values: list[Any] = []
            while True:
                token = self.peek()
                if token is not None and token[1] == "]":
                    self.i += 1
                    return values
                values.append(self.value())
                token = self.peek()
                if token is not None and token[1] == ",":
                    self.i += 1
        return [self.value()]

    def value(self) -> Any:
        kind, text, line = self.take()
        if text in ("{", "<"):
            return self.message("}" if text == "{" else ">")
        if kind == "string":
            return bytes(text[1:-1], "utf-8").decode("unicode_escape")
        if kind == "number":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "ident":
            if text in ("true", "True"):
                return True
            if text in ("false", "False"):
                return False
            return text
        raise PbtxtError(f"line {line}: expected a value, found {text!r}")


def parse(text: str) -> Message:
    """Parse protobuf text format into nested dicts; raises PbtxtError on malformed text."""
    return _Parser(text).message(closing=None)
