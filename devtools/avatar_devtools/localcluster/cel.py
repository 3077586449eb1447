"""A CRD's CEL validation rules (`x-kubernetes-validations`), evaluated as kube-apiserver does.

The rules are compiled once per CRD version (`compile_rules`, when the CRD is registered) by
cel-python (`celpy`), the maintained pure-Python CEL implementation; nothing here interprets CEL
itself. A write then walks only the nodes of the schema that carry rules or lead to one.

What kube-apiserver does, and this follows:

- `self` is the value at the rule's node (an object, a list, a map, a scalar); an absent or
  null value is not validated. A rule on a list's items or a map's values runs for each one.
- A transition rule (one that names `oldSelf`) runs only on an update and only where the old
  value can be correlated with the new one: the same property or map key, the same key of a
  `listType: map` list (never the items of an atomic list). `optionalOldSelf: true` makes it
  run on creates too, with `oldSelf` an absent optional (`oldSelf.hasValue()` is false;
  celpy has no optionals: `hasValue()`, `value()` and `orValue()` are given to it here).
- Ratcheting: where a value equals the old one, rules without `oldSelf` are not re-run (an
  object stored before a rule was added keeps being writable). Transition rules still run.
- A failed rule is a 422 cause at the rule's field (`spec.video`), or at `fieldPath` below it,
  with `reason` choosing the cause (Invalid by default, Forbidden, Required, Duplicate); the
  detail is `messageExpression` (when it yields a non-empty string), else `message`, else
  `failed rule: <rule>`. An object or list is not printed in the message (`spec.video: Invalid
  value: <message>`); a scalar is (`spec.roomId: Invalid value: "x": <message>`). An error
  while evaluating is a cause too (`no such key: x evaluating rule: <rule>`).
- Rules do not run when the schema already found a wrong type, an unsupported (enum) value, a
  missing required field, or a too long string or list ("some validation rules were not
  checked because the object was invalid"); other schema errors (a maximum, a pattern) do not
  keep them from running.

Not followed: the cost budget (the real server refuses a CRD whose rules could cost too much;
here a rule always runs to the end), and the Kubernetes CEL libraries that celpy lacks (`quantity`,
`url`, `ip`, `cidr`, `format`, the `strings`/`lists`/`sets` extensions, ...). A rule celpy cannot
compile, or one that calls a function celpy lacks, is logged once and not evaluated.

Cost: celpy evaluates one of these rules in 0.2-0.4 ms, so results are memoised per rule node
by the JSON of the value (and of the old value, for transition rules), and rules run only on the
top-level fields a write changed. Measured at the store on the 2-core dev box: an AvatarSession
create costs 0.05 ms without its rules and 1.0-1.5 ms with them when every rule's value is new
(five rules), 0.3 ms when one is (a burst of sessions that differ in room and VRAM); a spec
patch 0.7 ms (the `roomId` transition rule runs on every spec change); a status write nothing.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import celpy
from celpy import adapter, celparser, celtypes, evaluation

from avatar_devtools.localcluster import errors

logger = logging.getLogger(__name__)

BLOCKED = (
    "some validation rules were not checked because the object was invalid; correct the "
    "existing errors to complete validation"
)
_MEMO_SIZE = 4096
_ROOT_FIELDS = frozenset({"apiVersion", "kind", "metadata"})
# The interpreting runner. celpy 0.5's transpiling one (`CompiledRunner`) evaluates 5x faster
# but answers "no such overload" for `!has(...)` and `a || b` of this project's rules.
_ENVIRONMENT = celpy.Environment()


class Rule(NamedTuple):
    """One compiled entry of `x-kubernetes-validations`."""

    source: str
    program: celpy.Runner
    message: str
    message_program: celpy.Runner | None
    field_path: str
    reason: str
    uses_old_self: bool
    optional_old_self: bool


class Failure(NamedTuple):
    """A failed rule at one node, before it is placed at a field path."""

    suffix: str  # `fieldPath`, normalised: "" or ".a.b"
    reason: str
    detail: str
    omit_value: bool
    error: bool  # an evaluation error: the value printed is the schema type


class OptionalValue:
    """`oldSelf` of an `optionalOldSelf` rule: CEL's optional, which celpy lacks; its methods
    (`hasValue()`, `value()`, `orValue(v)`) are given to celpy as functions."""

    def __init__(self, value: Any = None, present: bool = False) -> None:
        self.value = value
        self.present = present


def _value(optional: OptionalValue) -> Any:
    if not optional.present:
        raise evaluation.CELEvalError("optional.none() dereference", ValueError, None)
    return optional.value


_OPTIONAL_FUNCTIONS: dict[str, Any] = {
    "hasValue": lambda o: celtypes.BoolType(o.present),
    "value": _value,
    "orValue": lambda o, default: o.value if o.present else default,
}


@functools.lru_cache(maxsize=1024)
def _compile(source: str) -> celpy.Runner:
    """One program per rule text (a CRD registered again, another version with the same rule:
    compiled once; 1-8 ms each). Programs keep no state between evaluations."""
    return _ENVIRONMENT.program(_ENVIRONMENT.compile(source), functions=_OPTIONAL_FUNCTIONS)


def _names_old_self(source: str) -> bool:
    return "oldSelf" in source


def compile_rule(entry: dict[str, Any], where: str) -> Rule | None:
    source = str(entry.get("rule") or "")
    try:
        program = _compile(source)
    except (celparser.CELParseError, evaluation.CELEvalError, ValueError, TypeError) as e:
        logger.warning(
            "cel rule not evaluated: celpy cannot compile it",
            extra={"field": where, "rule": source, "error": str(e)},
        )
        return None
    message_program = None
    if entry.get("messageExpression"):
        try:
            message_program = _compile(str(entry["messageExpression"]))
        except (celparser.CELParseError, evaluation.CELEvalError, ValueError, TypeError) as e:
            logger.warning(
                "cel messageExpression not evaluated: celpy cannot compile it",
                extra={"field": where, "expression": entry["messageExpression"], "error": str(e)},
            )
    field_path = str(entry.get("fieldPath") or "")
    if field_path and not field_path.startswith((".", "[")):
        field_path = "." + field_path
    return Rule(
        source=source.strip(),
        program=program,
        message=str(entry.get("message") or "").strip(),
        message_program=message_program,
        field_path=field_path,
        reason=str(entry.get("reason") or "FieldValueInvalid"),
        uses_old_self=_names_old_self(source),
        optional_old_self=bool(entry.get("optionalOldSelf")),
    )


class NodeRules:
    """The rules at one schema node and the nodes below it that have some."""

    def __init__(
        self,
        schema_type: str,
        rules: list[Rule],
        properties: dict[str, NodeRules],
        items: NodeRules | None,
        values: NodeRules | None,
        map_keys: tuple[str, ...] | None,
    ) -> None:
        self.schema_type = schema_type
        self.rules = rules
        self.properties = properties
        self.items = items
        self.values = values
        self.map_keys = map_keys  # a `listType: map` list's keys: its items correlate by them
        self.transition_below: bool = any(r.uses_old_self for r in rules) or any(
            child.transition_below for child in self._children()
        )
        self._memo: dict[str, list[Failure]] = {}

    def clear_memo(self) -> None:
        """Forget the memoised results (a benchmark's full-cost case)."""
        self._memo.clear()

    def _children(self) -> list[NodeRules]:
        found = list(self.properties.values())
        found += [c for c in (self.items, self.values) if c is not None]
        return found

    def failures(self, value: Any, old: Any, has_old: bool, only_transition: bool) -> list[Failure]:
        rules = [r for r in self.rules if r.uses_old_self] if only_transition else self.rules
        if not has_old:  # a create: transition rules run only with optionalOldSelf
            rules = [r for r in rules if not r.uses_old_self or r.optional_old_self]
        if not rules:
            return []
        transition = any(r.uses_old_self for r in rules)
        key = json.dumps(
            [value, old if transition else None, has_old and transition, only_transition],
            sort_keys=True,
            separators=(",", ":"),
        )
        found = self._memo.get(key)
        if found is None:
            found = self._evaluate(rules, value, old, has_old)
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = found
        return found

    def _evaluate(self, rules: list[Rule], value: Any, old: Any, has_old: bool) -> list[Failure]:
        self_value = adapter.json_to_cel(value)
        old_value = adapter.json_to_cel(old) if has_old else None
        plain: dict[str, Any] = {"self": self_value}
        if has_old:
            plain["oldSelf"] = old_value
        optional: dict[str, Any] = {
            "self": self_value,
            "oldSelf": OptionalValue(old_value, has_old),
        }
        found: list[Failure] = []
        omit = self.schema_type in ("object", "array")
        for rule in rules:
            if rule.uses_old_self and not has_old and not rule.optional_old_self:
                continue
            activation = optional if rule.optional_old_self else plain
            result: Any
            try:
                result = rule.program.evaluate(activation)
            except evaluation.CELEvalError as e:
                result = e
            if isinstance(result, evaluation.CELEvalError):
                if _unsupported(result, rule):
                    continue
                detail = f"{_eval_error(result)} evaluating rule: {rule.message or rule.source}"
                found.append(Failure("", "FieldValueInvalid", detail, False, True))
                continue
            if isinstance(result, celtypes.BoolType) and bool(result):
                continue
            detail = rule.message or f"failed rule: {rule.source}"
            if rule.message_program is not None:
                detail = _message(rule.message_program, activation) or detail
            found.append(Failure(rule.field_path, rule.reason, detail, omit, False))
        return found


_UNSUPPORTED_WARNED: set[str] = set()


def _unsupported(error: evaluation.CELEvalError, rule: Rule) -> bool:
    """Whether the rule calls a function celpy lacks (a Kubernetes CEL library's: `quantity`,
    `lowerAscii`, `isSorted`, ...): then it is not evaluated (logged once), not failed."""
    text = str(error.args[0]) if error.args else ""
    if not text.startswith("undeclared reference to "):
        return False
    if rule.source not in _UNSUPPORTED_WARNED:
        _UNSUPPORTED_WARNED.add(rule.source)
        name = text.removeprefix("undeclared reference to ").split(" ", 1)[0]
        logger.warning(
            "cel rule not evaluated: celpy lacks a function it calls",
            extra={"rule": rule.source, "function": name},
        )
    return True


def _eval_error(error: evaluation.CELEvalError) -> str:
    args = error.args
    text = str(args[0]) if args else str(error)
    if text.startswith("no such member in mapping: "):
        return "no such key: " + text.removeprefix("no such member in mapping: ").strip("'")
    return text


def _message(program: celpy.Runner, activation: dict[str, Any]) -> str:
    try:
        result = program.evaluate(activation)
    except evaluation.CELEvalError:
        return ""
    if isinstance(result, str) and "\n" not in result:
        return str(result).strip()
    return ""


def compile_rules(schema: Any, where: str = "") -> NodeRules | None:
    """The rules of a schema node and below, compiled; None when there are none."""
    if not isinstance(schema, dict):
        return None
    rules = [
        rule
        for entry in schema.get("x-kubernetes-validations") or []
        if isinstance(entry, dict) and (rule := compile_rule(entry, where or "<root>"))
    ]
    properties = {
        name: child
        for name, sub in (schema.get("properties") or {}).items()
        if (child := compile_rules(sub, f"{where}.{name}" if where else name))
    }
    items = compile_rules(schema.get("items"), f"{where}[*]")
    values = compile_rules(schema.get("additionalProperties"), f"{where}[*]")
    if not (rules or properties or items or values):
        return None
    map_keys = None
    if schema.get("x-kubernetes-list-type") == "map":
        map_keys = tuple(schema.get("x-kubernetes-list-map-keys") or ())
    return NodeRules(str(schema.get("type") or ""), rules, properties, items, values, map_keys)


_ABSENT = object()


def validate(
    node: NodeRules, value: Any, old: Any = _ABSENT, path: str = ""
) -> list[errors.StatusCause]:
    """The causes for the rules that `value` fails (`old`: the stored value, on an update)."""
    causes: list[errors.StatusCause] = []
    _walk(node, value, old, path, causes)
    return causes


def _walk(
    node: NodeRules, value: Any, old: Any, path: str, causes: list[errors.StatusCause]
) -> None:
    if value is None:
        return
    has_old = old is not _ABSENT and old is not None
    unchanged = has_old and value == old
    if unchanged and not node.transition_below:
        return
    for failure in node.failures(value, old if has_old else None, has_old, unchanged):
        causes.append(_cause(node, failure, value, path))
    if node.properties and type(value) is dict:
        old_map = old if has_old and type(old) is dict else {}
        for name, child in node.properties.items():
            if name in value:
                _walk(child, value[name], old_map.get(name, _ABSENT), _child(path, name), causes)
    if node.values is not None and type(value) is dict:
        old_map = old if has_old and type(old) is dict else {}
        for key, item in value.items():
            _walk(node.values, item, old_map.get(key, _ABSENT), f"{path}[{key}]", causes)
    if node.items is not None and type(value) is list:
        correlate = _correlator(node, old) if has_old else None
        for index, item in enumerate(value):
            previous = correlate(item) if correlate is not None else _ABSENT
            _walk(node.items, item, previous, f"{path}[{index}]", causes)


def _correlator(node: NodeRules, old: Any) -> Callable[[Any], Any] | None:
    """For a `listType: map` list, the old item with the same keys (atomic lists: none)."""
    keys = node.map_keys
    if not keys or type(old) is not list:
        return None
    by_key = {tuple(item.get(k) for k in keys): item for item in old if type(item) is dict}

    def find(item: Any) -> Any:
        if type(item) is not dict:
            return _ABSENT
        return by_key.get(tuple(item.get(k) for k in keys), _ABSENT)

    return find


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _cause(node: NodeRules, failure: Failure, value: Any, path: str) -> errors.StatusCause:
    field = path + failure.suffix if failure.suffix.startswith("[") else path
    if failure.suffix and not failure.suffix.startswith("["):
        field = _child(path, failure.suffix.lstrip("."))
    if failure.error:
        return errors.invalid_value(field, node.schema_type, failure.detail)
    if failure.reason == "FieldValueForbidden":
        return errors.forbidden(field, failure.detail)
    if failure.reason == "FieldValueRequired":
        return errors.required(field, failure.detail)
    if failure.reason == "FieldValueDuplicate":
        if failure.omit_value:
            return errors.cause("FieldValueDuplicate", field, "Duplicate value")
        return errors.duplicate(field, value)
    if failure.omit_value:
        return errors.cause("FieldValueInvalid", field, f"Invalid value: {failure.detail}")
    return errors.invalid_value(field, value, failure.detail)


class Validator:
    """One CRD version's rules, compiled: what `schemas.CustomResourceSchema.admit` runs."""

    def __init__(self, schema: dict[str, Any]) -> None:
        properties = schema.get("properties") or {}
        self.fields: dict[str, NodeRules] = {
            name: child
            for name, sub in properties.items()
            if name not in _ROOT_FIELDS and (child := compile_rules(sub, name))
        }
        root_rules = [
            rule
            for entry in schema.get("x-kubernetes-validations") or []
            if isinstance(entry, dict) and (rule := compile_rule(entry, "<root>"))
        ]
        self.root = NodeRules("object", root_rules, {}, None, None, None) if root_rules else None

    def __bool__(self) -> bool:
        return bool(self.fields) or self.root is not None

    def validate(
        self, obj: dict[str, Any], old: dict[str, Any] | None, fields: list[str]
    ) -> list[errors.StatusCause]:
        """The causes for `obj` (its top-level `fields` that changed; old: the stored object)."""
        causes: list[errors.StatusCause] = []
        for name in fields:
            node = self.fields.get(name)
            if node is None or name not in obj:
                continue
            previous = old.get(name, _ABSENT) if old is not None else _ABSENT
            _walk(node, obj[name], previous, name, causes)
        if self.root is not None:
            _walk(self.root, _root_view(obj), _root_view(old) if old else _ABSENT, "", causes)
        return causes


def blocked() -> errors.StatusCause:
    """The cause kube-apiserver adds when the schema's errors kept the rules from running
    (`field.Invalid(nil, nil, ...)`: no field path, a null value)."""
    return errors.cause("FieldValueInvalid", "<nil>", f"Invalid value: null: {BLOCKED}")


def _root_view(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as a root rule sees it: metadata only as name and generateName."""
    view = dict(obj)
    meta = obj.get("metadata") or {}
    view["metadata"] = {k: meta[k] for k in ("name", "generateName") if k in meta}
    return view
