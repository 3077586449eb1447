"""A CRD's openAPIV3Schema, applied to custom resources the way kube-apiserver applies it.

Three steps, in the API server's order, on every create and on every update that changes
something outside `metadata`:

1. **Prune**: fields the schema does not declare are dropped (unless a node says
   `x-kubernetes-preserve-unknown-fields: true`), so a typo in a spec, or a kopf handler's
   result written into a status without a schema for it, silently disappears as on a real cluster.
2. **Default**: a property with a `default` that is absent (or `null` where the schema is not
   `nullable`) gets it, then defaulting recurses into it, so `video: {default: {}}` fills in the
   defaults of `video.fps` and friends.
3. **Validate** with `jsonschema.Draft4Validator`, after translating the OpenAPI dialect:
   `nullable: true` becomes a `"null"` type (and a `None` enum member),
   `x-kubernetes-int-or-string` becomes `anyOf: [integer, string]`. Errors come back as
   `Status` causes naming the field path (`spec.video.fps`, `spec.tolerations[0].key`) with
   kube-apiserver's wording ("Required value", "Unsupported value", "should be less than or
   equal to").

4. **CEL rules** (`x-kubernetes-validations`), by `cel`, unless the schema already found a
   wrong type, an unsupported value, a missing required field, or a too long string or list
   (kube-apiserver then says that the rules were not checked).

Not evaluated: list-type/map-type uniqueness (`x-kubernetes-list-type`), and validation
ratcheting of the schema's own keywords (CEL rules ratchet, see `cel`).

`structural_errors` checks a CRD's schema the way a v1 CRD is checked on creation: keywords a
structural schema forbids (`patternProperties`, `$ref`, `definitions`, `dependencies`, `id`,
`additionalItems`, `type: null`), a node without a `type`, `properties` together with
`additionalProperties`, and defaults that do not validate.

Validators are compiled once per top-level property (`spec`, `status`, ...), so that a
status-only write validates the status alone: per-request cost stays flat however big the spec.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import fractions
import logging
import re
from collections.abc import Callable, Container, Iterable
from typing import Any

import jsonschema

from avatar_devtools.localcluster import cel, errors

logger = logging.getLogger(__name__)
_FORBIDDEN_KEYWORDS = {
    "patternProperties": "patternProperties is not supported",
    "definitions": "definitions is not supported",
    "dependencies": "dependencies is not supported",
    "$ref": "$ref is not supported",
    "id": "id is not supported",
    "additionalItems": "additionalItems is not supported",
}
# Not validation: dropped when translating to JSON Schema.
_DOC_KEYWORDS = frozenset({"description", "default", "example", "externalDocs", "nullable"})
_ROOT_FIELDS = frozenset({"apiVersion", "kind", "metadata"})
_TYPES = frozenset({"array", "boolean", "integer", "number", "object", "string"})

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

_FORMATS = jsonschema.FormatChecker(formats=())
_TYPE_INVALID = "FieldValueTypeInvalid"
# Causes after which kube-apiserver does not run the CEL rules (`hasBlockingErr`).
_BLOCKING = frozenset(
    {
        _TYPE_INVALID,
        "FieldValueNotSupported",
        "FieldValueRequired",
        "FieldValueTooLong",
        "FieldValueTooMany",
    }
)


@_FORMATS.checks("date-time", raises=ValueError)
def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    datetime.datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    return True


@_FORMATS.checks("date", raises=ValueError)
def _is_date(value: object) -> bool:
    if isinstance(value, str):
        datetime.date.fromisoformat(value)
    return True


@_FORMATS.checks("byte", raises=(ValueError, binascii.Error))
def _is_base64(value: object) -> bool:
    if isinstance(value, str):
        base64.b64decode(value, validate=True)
    return True


def translate(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) → JSON Schema draft 4."""
    if isinstance(node, list):
        return [translate(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties",) and isinstance(value, dict):
            out[key] = {name: translate(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = translate(value)
        elif key in ("allOf", "anyOf", "oneOf") and isinstance(value, list):
            out[key] = [translate(sub) for sub in value]
        elif key in _DOC_KEYWORDS or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = copy.deepcopy(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        if "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


# --- structural checks on a CRD's schema --------------------------------------------------------


def structural_errors(schema: Any, path: str) -> list[errors.StatusCause]:
    """What a v1 CRD's openAPIV3Schema breaks, as 422 causes with field paths."""
    causes: list[errors.StatusCause] = []
    if not isinstance(schema, dict):
        return [errors.required(path, "schemas are required")]
    _check_node(schema, path, causes, root=True)
    return causes


def _check_node(node: Any, path: str, causes: list[errors.StatusCause], *, root: bool) -> None:
    if not isinstance(node, dict):
        causes.append(errors.invalid_value(path, node, "must be a schema object"))
        return
    for keyword, message in _FORBIDDEN_KEYWORDS.items():
        if keyword in node:
            causes.append(errors.forbidden(f"{path}.{keyword}", message))
    node_type = node.get("type")
    if node_type == "null":
        causes.append(
            errors.forbidden(
                f"{path}.type", "type cannot be set to null, use nullable as an alternative"
            )
        )
    elif node_type is not None and node_type not in _TYPES:
        causes.append(errors.not_supported(f"{path}.type", node_type, sorted(_TYPES)))
    untyped_ok = node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if not node_type and not untyped_ok:
        causes.append(errors.required(f"{path}.type", "must not be empty for specified fields"))
    if "properties" in node and "additionalProperties" in node:
        causes.append(
            errors.forbidden(
                f"{path}.additionalProperties",
                "additionalProperties and properties are mutual exclusive",
            )
        )
    if isinstance(node.get("items"), list):
        causes.append(
            errors.forbidden(f"{path}.items", "items must be a schema object and not an array")
        )
    for name, sub in (node.get("properties") or {}).items():
        _check_node(sub, f"{path}.properties[{name}]", causes, root=False)
    if isinstance(node.get("items"), dict):
        _check_node(node["items"], f"{path}.items", causes, root=False)
    if isinstance(node.get("additionalProperties"), dict):
        _check_node(
            node["additionalProperties"], f"{path}.additionalProperties", causes, root=False
        )
    for keyword in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(keyword) or []):
            _check_junctor(sub, f"{path}.{keyword}[{i}]", causes)
    if "default" in node:
        if root:
            causes.append(errors.forbidden(f"{path}.default", "must not be set at the root"))
        else:
            for cause in _validate_value(node["default"], node, ""):
                causes.append(
                    errors.invalid_value(f"{path}.default", node["default"], cause["message"])
                )


def _check_junctor(node: Any, path: str, causes: list[errors.StatusCause]) -> None:
    """Inside allOf/anyOf/oneOf a structural schema may only restate validation, no types."""
    if not isinstance(node, dict):
        return
    for keyword, message in _FORBIDDEN_KEYWORDS.items():
        if keyword in node:
            causes.append(errors.forbidden(f"{path}.{keyword}", message))
    for keyword in ("type", "default", "nullable", "description"):
        if keyword in node:
            causes.append(
                errors.forbidden(
                    f"{path}.{keyword}", f"{keyword} must be empty inside allOf, anyOf and oneOf"
                )
            )


# --- pruning and defaulting -------------------------------------------------------------------


def prune(value: Any, schema: dict[str, Any]) -> Any:
    """Drop the fields the schema does not declare; returns the (changed in place) value."""
    if isinstance(value, dict):
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        # Only a leniently accepted, non-structural schema has patternProperties (see Store).
        patterns = [
            (re.compile(p), sub) for p, sub in (schema.get("patternProperties") or {}).items()
        ]
        for key in list(value):
            if embedded and key in _ROOT_FIELDS:
                continue
            if properties is not None and key in properties:
                prune(value[key], properties[key])
            elif isinstance(additional, dict):
                prune(value[key], additional)
            elif matched := next((sub for rx, sub in patterns if rx.search(key)), None):
                prune(value[key], matched)
            elif not preserve and additional is not True:
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            prune(item, schema["items"])
    return value


def unknown_fields(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """The paths of the fields `prune` would drop (what `fieldValidation` reports)."""
    found: list[str] = []
    if isinstance(value, dict):
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        patterns = [
            (re.compile(p), sub) for p, sub in (schema.get("patternProperties") or {}).items()
        ]
        for key in value:
            here = f"{path}.{key}" if path else key
            if embedded and key in _ROOT_FIELDS:
                continue
            if properties is not None and key in properties:
                found += unknown_fields(value[key], properties[key], here)
            elif isinstance(additional, dict):
                found += unknown_fields(value[key], additional, here)
            elif matched := next((sub for rx, sub in patterns if rx.search(key)), None):
                found += unknown_fields(value[key], matched, here)
            elif not preserve and additional is not True:
                found.append(here)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key, sub in properties.items():
            if "default" in sub and (
                key not in value or (value[key] is None and not sub.get("nullable"))
            ):
                value[key] = copy.deepcopy(sub["default"])
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                apply_defaults(item, properties[key])
            elif isinstance(additional, dict):
                apply_defaults(item, additional)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])
    return value


# --- validation -------------------------------------------------------------------------------


def _field_path(prefix: str, parts: Iterable[Any]) -> str:
    path = prefix
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _messages(error: jsonschema.ValidationError, prefix: str) -> list[errors.StatusCause]:
    path = _field_path(prefix, error.absolute_path)
    value: Any = error.instance
    kind = error.validator
    limit: Any = error.validator_value
    if kind == "required":
        present = value if isinstance(value, dict) else {}
        return [errors.required(_field_path(path, [name])) for name in limit if name not in present]
    if kind == "enum":
        return [errors.not_supported(path, value, [v for v in limit if v is not None])]
    if kind == "type":
        types = limit if isinstance(limit, list) else [limit]
        named = " or ".join(t for t in types if t != "null")
        # the value printed is its type's name, as kube-openapi's validator reports it
        given = errors.type_name(value, errors.SCHEMA_TYPES)
        detail = f"{path} in body must be of type {named}: {errors.go_value(given)}"
        cause = errors.invalid_value(path, given, detail)
        return [errors.cause(_TYPE_INVALID, path, cause["message"])]
    details = {
        "maximum": f"should be less than or equal to {limit}",
        "minimum": f"should be greater than or equal to {limit}",
        "maxLength": f"should be at most {limit} chars long",
        "minLength": f"should be at least {limit} chars long",
        "pattern": f"should match '{limit}'",
        "multipleOf": f"should be a multiple of {limit}",
        "maxItems": f"should have at most {limit} items",
        "minItems": f"should have at least {limit} items",
        "maxProperties": f"should have at most {limit} properties",
        "minProperties": f"should have at least {limit} properties",
        "format": f"must be of type {limit}",
        "uniqueItems": "shouldn't contain duplicates",
    }
    if kind == "maxLength":
        return [
            errors.cause("FieldValueTooLong", path, f"Too long: may not be more than {limit} bytes")
        ]
    if kind == "maxItems":
        return [
            errors.cause(
                "FieldValueTooMany",
                path,
                f"Too many: {len(value)}: must have at most {limit} items",
            )
        ]
    detail = details.get(str(kind), error.message)
    return [errors.invalid_value(path, value, f"{path} in body {detail}")]


_STRING_KEYWORDS = ("maxLength", "minLength", "pattern")


def _as_kube_openapi(
    found: Iterable[jsonschema.ValidationError],
) -> list[jsonschema.ValidationError]:
    """jsonschema's errors as kube-openapi reports them: its string validator stops at the first
    of maxLength, minLength, pattern (an empty roomId is too short, not also unmatched)."""
    kept: list[jsonschema.ValidationError] = []
    strings: dict[tuple[Any, ...], jsonschema.ValidationError] = {}
    for error in found:
        if error.validator not in _STRING_KEYWORDS:
            kept.append(error)
            continue
        where = tuple(error.absolute_path)
        first = strings.get(where)
        rank = _STRING_KEYWORDS.index(str(error.validator))
        if first is None:
            strings[where] = error
            kept.append(error)
        elif rank < _STRING_KEYWORDS.index(str(first.validator)):
            kept[kept.index(first)] = error
            strings[where] = error
    return kept


def _validate_value(value: Any, schema: dict[str, Any], prefix: str) -> list[errors.StatusCause]:
    validator = jsonschema.Draft4Validator(translate(schema), format_checker=_FORMATS)
    causes: list[errors.StatusCause] = []
    for error in _as_kube_openapi(validator.iter_errors(value)):
        causes.extend(_messages(error, prefix))
    return causes


# --- compiled forms, for the hot path ----------------------------------------------------------
#
# `prune`, `apply_defaults` and jsonschema's validator walk the schema on every call; at a few
# hundred microseconds per AvatarSession that was most of a create's cost. The compiled forms
# below turn a schema into closures once per CRD version: a subtree without defaults costs
# nothing to default, a scalar costs nothing to prune, and validity is answered by plain type
# and bound checks. Only an invalid object goes through jsonschema, which also words the
# messages, so the two can only disagree on what is valid; tests/devtools/localcluster checks
# with hypothesis that they agree. Nodes with keywords the compiler does not know (allOf,
# anyOf, oneOf, not, uniqueItems, ...) are answered by jsonschema's own `is_valid`.

Check = Callable[[Any], bool]
Apply = Callable[[Any], None]

_FALLBACK_KEYWORDS = frozenset(
    {
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "patternProperties",
        "dependencies",
        "$ref",
        "additionalItems",
        "uniqueItems",
    }
)
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _json_equal(one: Any, two: Any) -> bool:
    """jsonschema's equality: `True` is not `1`, recursively."""
    if type(one) is bool or type(two) is bool:
        return type(one) is type(two) and one == two
    if isinstance(one, list) and isinstance(two, list):
        return len(one) == len(two) and all(
            _json_equal(a, b) for a, b in zip(one, two, strict=True)
        )
    if isinstance(one, dict) and isinstance(two, dict):
        return one.keys() == two.keys() and all(_json_equal(one[k], two[k]) for k in one)
    return bool(one == two)


def _multiple_of(value: int | float, base: int | float) -> bool:
    if isinstance(base, float):
        quotient = value / base
        try:
            return int(quotient) == quotient
        except OverflowError:
            return (fractions.Fraction(value) / fractions.Fraction(base)).denominator == 1
    return not value % base


def _enum_key(value: Any) -> tuple[str, Any] | None:
    """A hashable key under which jsonschema's equality holds (1 == 1.0, True != 1)."""
    kind = type(value)
    if kind is bool:
        return ("bool", value)
    if kind is int or kind is float:
        return ("number", value)
    if kind is str:
        return ("string", value)
    if value is None:
        return ("null", None)
    return None


def compile_check(node: dict[str, Any]) -> Check:
    """A validity check for one node of a translated (draft 4) schema."""
    if _FALLBACK_KEYWORDS & node.keys():
        return jsonschema.Draft4Validator(node, format_checker=_FORMATS).is_valid
    allowed: frozenset[type] | None = None
    if "type" in node:
        names = node["type"] if isinstance(node["type"], list) else [node["type"]]
        allowed = frozenset(t for name in names for t in _PY_TYPES.get(name, ()))
    options: list[Any] | None = list(node["enum"]) if "enum" in node else None
    option_keys = {k for o in options if (k := _enum_key(o)) is not None} if options else set()
    fmt = node.get("format") if node.get("format") in _FORMATS.checkers else None
    numbers: list[Check] = []
    strings: list[Check] = []
    arrays: list[Check] = []
    if "minimum" in node:
        low = node["minimum"]
        if node.get("exclusiveMinimum"):
            numbers.append(lambda v: v > low)
        else:
            numbers.append(lambda v: v >= low)
    if "maximum" in node:
        high = node["maximum"]
        if node.get("exclusiveMaximum"):
            numbers.append(lambda v: v < high)
        else:
            numbers.append(lambda v: v <= high)
    if "multipleOf" in node:
        base = node["multipleOf"]
        numbers.append(lambda v: _multiple_of(v, base))
    if "minLength" in node:
        shortest = node["minLength"]
        strings.append(lambda v: len(v) >= shortest)
    if "maxLength" in node:
        longest = node["maxLength"]
        strings.append(lambda v: len(v) <= longest)
    if "pattern" in node:
        search = re.compile(node["pattern"]).search
        strings.append(lambda v: search(v) is not None)
    properties = {k: compile_check(sub) for k, sub in (node.get("properties") or {}).items()}
    pairs = list(properties.items())
    required = list(node.get("required") or ())
    additional = node.get("additionalProperties")
    closed = additional is False
    extra = compile_check(additional) if isinstance(additional, dict) else None
    fewest_properties = node.get("minProperties")
    most_properties = node.get("maxProperties")
    if isinstance(node.get("items"), dict):
        item_check = compile_check(node["items"])
        arrays.append(lambda v: all(item_check(item) for item in v))
    if "minItems" in node:
        fewest_items = node["minItems"]
        arrays.append(lambda v: len(v) >= fewest_items)
    if "maxItems" in node:
        most_items = node["maxItems"]
        arrays.append(lambda v: len(v) <= most_items)

    def check_object(value: dict[str, Any]) -> bool:
        for key, sub in pairs:
            if key in value and not sub(value[key]):
                return False
        for key in required:
            if key not in value:
                return False
        if closed or extra is not None:
            for key, item in value.items():
                if key not in properties and (closed or (extra is not None and not extra(item))):
                    return False
        if fewest_properties is not None and len(value) < fewest_properties:
            return False
        return most_properties is None or len(value) <= most_properties

    def check(value: Any) -> bool:
        kind = type(value)
        if allowed is not None and kind not in allowed:
            return False
        if options is not None:
            key = _enum_key(value)
            if key is not None:
                if key not in option_keys:
                    return False
            elif not any(_json_equal(value, o) for o in options):
                return False
        if fmt is not None and not _FORMATS.conforms(value, fmt):
            return False
        if kind is dict:
            return check_object(value)
        if kind is str:
            tests = strings
        elif kind is int or kind is float:
            tests = numbers
        elif kind is list:
            tests = arrays
        else:
            return True
        return all(test(value) for test in tests)

    return check


def _fresh(value: Any) -> Any:
    """A default, as a value the object may own (`{}` is the common case: no deepcopy)."""
    if type(value) is dict or type(value) is list:
        return copy.deepcopy(value) if value else type(value)()
    return value


def compile_defaulter(node: dict[str, Any]) -> Apply | None:
    """`apply_defaults` for one node, or None when nothing below it has a default."""
    properties: dict[str, Any] = node.get("properties") or {}
    defaults = [
        (key, sub["default"], bool(sub.get("nullable")))
        for key, sub in properties.items()
        if "default" in sub
    ]
    children = [(k, d) for k, sub in properties.items() if (d := compile_defaulter(sub))]
    additional = node.get("additionalProperties")
    extra = compile_defaulter(additional) if isinstance(additional, dict) else None
    items = compile_defaulter(node["items"]) if isinstance(node.get("items"), dict) else None
    if not (defaults or children or extra or items):
        return None

    def apply(value: Any) -> None:
        if type(value) is dict:
            for key, default, nullable in defaults:
                if key not in value or (value[key] is None and not nullable):
                    value[key] = _fresh(default)
        _descend(value, children, extra, properties, items)

    return apply


def _descend(
    value: Any,
    children: list[tuple[str, Apply]],
    extra: Apply | None,
    known: Container[str],
    items: Apply | None,
) -> None:
    """A compiled node's children applied to `value`: each property's to its field, `extra`
    (additionalProperties') to the fields not `known`, `items` to a list's items."""
    if type(value) is dict:
        for key, child in children:
            if key in value:
                child(value[key])
        if extra is not None:
            for key, item in value.items():
                if key not in known:
                    extra(item)
    elif type(value) is list and items is not None:
        for item in value:
            items(item)


def _clear_stray_object(value: Any) -> None:
    if type(value) is dict:
        value.clear()


def compile_pruner(node: dict[str, Any]) -> Apply:
    """`prune` for one node."""
    properties: dict[str, Any] | None = node.get("properties")
    additional = node.get("additionalProperties")
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    embedded = bool(node.get("x-kubernetes-embedded-resource"))
    if node.get("patternProperties"):
        return lambda value: prune(value, node)
    children = [(k, compile_pruner(sub)) for k, sub in (properties or {}).items()]
    extra = compile_pruner(additional) if isinstance(additional, dict) else None
    items = compile_pruner(node["items"]) if isinstance(node.get("items"), dict) else None
    keeps_unknown = preserve or additional is True or isinstance(additional, dict)
    may_hold_objects = (
        properties is not None
        or additional is not None
        or node.get("type")
        in (
            "object",
            None,
        )
    )
    if not may_hold_objects and items is None:
        return _clear_stray_object  # a scalar node: only an (invalid) object there has fields
    known = frozenset(properties or ())

    def apply(value: Any) -> None:
        if type(value) is dict and not keeps_unknown:
            for key in [k for k in value if k not in known]:
                if not (embedded and key in _ROOT_FIELDS):
                    del value[key]
        _descend(value, children, extra, known, items)

    return apply


class CustomResourceSchema:
    """One version's schema, compiled: prune, default and validate a custom resource."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._properties: dict[str, dict[str, Any]] = {
            k: v for k, v in (schema.get("properties") or {}).items() if k not in _ROOT_FIELDS
        }
        self._required = [r for r in schema.get("required") or [] if r not in _ROOT_FIELDS]
        self._preserve_root = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        self._pruners = {k: compile_pruner(sub) for k, sub in self._properties.items()}
        self._defaulters = {k: compile_defaulter(sub) for k, sub in self._properties.items()}
        self._checks = {k: compile_check(translate(sub)) for k, sub in self._properties.items()}
        self._validators: dict[str, jsonschema.Draft4Validator] = {}
        self.rules = cel.Validator(schema)

    def _validator(self, key: str) -> jsonschema.Draft4Validator:
        validator = self._validators.get(key)
        if validator is None:
            validator = jsonschema.Draft4Validator(
                translate(self._properties[key]), format_checker=_FORMATS
            )
            self._validators[key] = validator
        return validator

    def unknown_fields(self, obj: dict[str, Any]) -> list[str]:
        """The fields of `obj` this schema does not declare, as paths (`spec.video.colour`)."""
        found: list[str] = []
        for key, value in obj.items():
            if key in _ROOT_FIELDS:
                continue
            if key in self._properties:
                found += unknown_fields(value, self._properties[key], key)
            elif not self._preserve_root:
                found.append(key)
        return found

    def admit(
        self,
        obj: dict[str, Any],
        changed: Iterable[str] | None = None,
        old: dict[str, Any] | None = None,
    ) -> list[errors.StatusCause]:
        """Prune and default `obj` in place; return the validation causes (empty when valid).

        `changed` names the top-level fields that differ from the stored object `old`: only
        those are pruned, defaulted and validated (the others were when they were written),
        the CEL rules included (`old` for their `oldSelf`).
        """
        fields = [k for k in obj if k not in _ROOT_FIELDS] if changed is None else list(changed)
        for key in fields:
            if key not in obj:
                continue
            if key not in self._properties:
                if not self._preserve_root:
                    del obj[key]
                continue
            pruner = self._pruners[key]
            if pruner is not None:
                pruner(obj[key])
        if changed is None:
            for key, sub in self._properties.items():
                if key not in obj and "default" in sub:
                    obj[key] = _fresh(sub["default"])
                    fields.append(key)
        for key in fields:
            defaulter = self._defaulters.get(key)
            if defaulter is not None and key in obj:
                defaulter(obj[key])
        causes: list[errors.StatusCause] = [
            errors.required(name) for name in self._required if name not in obj
        ]
        for key in fields:
            if key not in obj or key not in self._checks or self._checks[key](obj[key]):
                continue
            found = [
                c
                for e in _as_kube_openapi(self._validator(key).iter_errors(obj[key]))
                for c in _messages(e, key)
            ]
            if not found:
                logger.warning(
                    "compiled schema check disagrees with jsonschema", extra={"field": key}
                )
            causes.extend(found)
        if self.rules:
            if any(c.get("reason") in _BLOCKING for c in causes):
                causes.append(cel.blocked())
            else:
                causes.extend(self.rules.validate(obj, old, fields))
        return causes
