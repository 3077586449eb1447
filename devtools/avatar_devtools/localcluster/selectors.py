"""Label and field selectors, parsed once per request and matched against stored objects.

Label selectors take the whole grammar of `kubectl -l`: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
`k notin (a,b)`, `k` (exists) and `!k` (does not exist), joined by commas, all of which must
hold. Field selectors take `path=v`, `path==v` and `path!=v` on dotted paths; which paths a
resource accepts is the resource's business (`resources.ResourceInfo.field_labels`), as on a
real API server, which answers 400 for a field label it does not support.

A field's value is compared as kube-apiserver does: as a string, with a missing field as "" and
booleans as "true"/"false".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

from avatar_devtools.localcluster import errors

_KEY = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")
_FIELD_RE = re.compile(r"^\s*([A-Za-z0-9_.\-/\[\]]+?)\s*(==|=|!=)\s*(.*?)\s*$")


class LabelRequirement(NamedTuple):
    key: str
    op: str  # "in", "notin", "exists", "!exists"
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "in":
            return self.key in labels and labels[self.key] in self.values
        if self.op == "notin":
            return self.key not in labels or labels[self.key] not in self.values
        if self.op == "exists":
            return self.key in labels
        return self.key not in labels


_NO_LABELS: Mapping[str, str] = {}


def _label_test(req: LabelRequirement) -> Callable[[Mapping[str, str]], bool]:
    """One requirement as a closure: matching runs per object of a list, so it must be cheap."""
    key = req.key
    if req.op == "in" and len(req.values) == 1:
        (value,) = req.values
        return lambda labels: labels.get(key) == value
    if req.op == "in":
        values = req.values
        return lambda labels: labels.get(key) in values
    if req.op == "notin":
        excluded = req.values
        return lambda labels: labels.get(key) not in excluded
    if req.op == "exists":
        return lambda labels: key in labels
    return lambda labels: key not in labels


class LabelSelector:
    """All requirements must hold; `equalities` feed the store's label index."""

    __slots__ = ("_tests", "equalities", "requirements")

    def __init__(self, requirements: tuple[LabelRequirement, ...]) -> None:
        self.requirements = requirements
        self._tests = [_label_test(r) for r in requirements]
        self.equalities = [
            (r.key, next(iter(r.values)))
            for r in requirements
            if r.op == "in" and len(r.values) == 1
        ]

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or _NO_LABELS
        return all(test(labels) for test in self._tests)

    @property
    def empty(self) -> bool:
        return not self.requirements


class FieldRequirement(NamedTuple):
    path: tuple[str, ...]
    value: str
    negated: bool

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (field_string(obj, self.path) == self.value) != self.negated


class FieldSelector(NamedTuple):
    requirements: tuple[FieldRequirement, ...]

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(req.matches(obj) for req in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


EVERYTHING_LABELS = LabelSelector(())
EVERYTHING_FIELDS = FieldSelector(())


def _split_top_level(text: str) -> list[str]:
    """Split on the commas that are not inside `( )`."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def parse_labels(text: str | None) -> LabelSelector:
    if not text or not text.strip():
        return EVERYTHING_LABELS
    requirements: list[LabelRequirement] = []
    for part in _split_top_level(text):
        if m := _SET_RE.match(part):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            requirements.append(LabelRequirement(m.group(1), m.group(2), values))
        elif m := _EQ_RE.match(part):
            op = "notin" if m.group(2) == "!=" else "in"
            requirements.append(LabelRequirement(m.group(1), op, frozenset({m.group(3)})))
        elif m := _EXISTS_RE.match(part):
            op = "!exists" if m.group(1) else "exists"
            requirements.append(LabelRequirement(m.group(2), op, frozenset()))
        else:
            raise errors.bad_request(
                f"unable to parse requirement: found '{part.strip()}', "
                "expected: in, notin, =, ==, !=, exists or !key"
            )
    return LabelSelector(tuple(requirements))


def parse_fields(text: str | None, supported: Collection[str]) -> FieldSelector:
    """Parse a field selector, refusing (400) paths the resource does not index."""
    if not text or not text.strip():
        return EVERYTHING_FIELDS
    requirements: list[FieldRequirement] = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = _FIELD_RE.match(part)
        if not m:
            raise errors.bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        path, op, value = m.group(1), m.group(2), m.group(3)
        if path not in supported:
            raise errors.bad_request(f'field label not supported: "{path}"')
        requirements.append(FieldRequirement(tuple(path.split(".")), value, op == "!="))
    return FieldSelector(tuple(requirements))


def field_string(obj: Mapping[str, Any], path: tuple[str, ...]) -> str:
    """A field's value as a field selector compares it."""
    node: Any = obj
    for step in path:
        if not isinstance(node, Mapping):
            return ""
        node = node.get(step)
        if node is None:
            return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, str):
        return node
    if isinstance(node, int | float):
        return str(node)
    return ""
