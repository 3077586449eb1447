"""Kubernetes `Status` errors, as the API server sends them.

Every refusal of the emulated API server is an `ApiError` that carries the exact `Status` object
a kube-apiserver would answer with: the HTTP code, the machine-readable `reason`, a message in
the API server's own wording, and `details` (name, group, kind and, for 422, one `cause` per
field). Clients branch on `code` and `reason` (kopf treats 422 from a JSON-patch `test` as "retry
later", the `kubernetes` client raises `ApiException(status=...)`), so those must be right; the
messages follow kube-apiserver's so that a log line reads the same here and on a real cluster.

The constructors are named after the `reason` they produce (`not_found`, `conflict`, ...).
"""

from __future__ import annotations

import json
from typing import Any, NotRequired, TypedDict


class StatusCause(TypedDict):
    reason: str
    message: str
    field: NotRequired[str]


class StatusDetails(TypedDict, total=False):
    name: str
    group: str
    kind: str
    uid: str
    causes: list[StatusCause]
    retryAfterSeconds: int


class Status(TypedDict):
    kind: str
    apiVersion: str
    metadata: dict[str, Any]
    status: str
    message: str
    reason: str
    details: NotRequired[StatusDetails]
    code: int


class ApiError(Exception):
    """A refusal, answered to the client as a `Status` object with `code` as the HTTP status."""

    def __init__(
        self, code: int, reason: str, message: str, details: StatusDetails | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Status:
        body: Status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body

    def to_json(self) -> bytes:
        return json.dumps(self.status()).encode()

    def __repr__(self) -> str:
        return f"ApiError({self.code}, {self.reason!r}, {self.message!r})"


def _qualified(plural: str, group: str) -> str:
    """`pods` for the core group, `avatarsessions.avatar-operator.dev` for the others."""
    return f"{plural}.{group}" if group else plural


def _details(plural: str, group: str, name: str) -> StatusDetails:
    details: StatusDetails = {"kind": plural}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    return details


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{_qualified(plural, group)} "{name}" not found',
        _details(plural, group, name),
    )


def no_such_path() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{_qualified(plural, group)} "{name}" already exists',
        _details(plural, group, name),
    )


def conflict(plural: str, group: str, name: str, why: str | None = None) -> ApiError:
    why = why or (
        "the object has been modified; please apply your changes to the latest version "
        "and try again"
    )
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(plural, group)} "{name}": {why}',
        _details(plural, group, name),
    )


def invalid(kind: str, group: str, name: str, causes: list[StatusCause]) -> ApiError:
    """422: the object breaks its schema; each cause names the field path it is about."""
    qualified_kind = f"{kind}.{group}" if group else kind
    parts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details: StatusDetails = {"name": name, "kind": kind, "causes": causes}
    if group:
        details["group"] = group
    return ApiError(422, "Invalid", f'{qualified_kind} "{name}" is invalid: {summary}', details)


def cause(reason: str, field: str, message: str) -> StatusCause:
    return {"reason": reason, "field": field, "message": message}


def required(field: str, detail: str = "") -> StatusCause:
    return cause("FieldValueRequired", field, "Required value" + (f": {detail}" if detail else ""))


def invalid_value(field: str, value: Any, detail: str) -> StatusCause:
    return cause("FieldValueInvalid", field, f"Invalid value: {go_value(value)}: {detail}")


def forbidden(field: str, detail: str) -> StatusCause:
    return cause("FieldValueForbidden", field, f"Forbidden: {detail}")


def not_supported(field: str, value: Any, supported: list[Any]) -> StatusCause:
    # each option quoted, whatever its type (`strconv.Quote(fmt.Sprint(v))`)
    options = ", ".join(json.dumps(v if isinstance(v, str) else go_value(v)) for v in supported)
    return cause(
        "FieldValueNotSupported",
        field,
        f"Unsupported value: {go_value(value)}: supported values: {options}",
    )


def duplicate(field: str, value: Any) -> StatusCause:
    return cause("FieldValueDuplicate", field, f"Duplicate value: {go_value(value)}")


def unprocessable(message: str) -> ApiError:
    """422 without field causes: what a failed JSON-patch `test` answers."""
    return ApiError(422, "Invalid", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden_request(plural: str, group: str, name: str, why: str) -> ApiError:
    return ApiError(
        403,
        "Forbidden",
        f'{_qualified(plural, group)} "{name}" is forbidden: {why}',
        _details(plural, group, name),
    )


def gone(message: str) -> ApiError:
    """410: the resourceVersion a watch or a list continuation asks for is compacted away."""
    return ApiError(410, "Expired", message)


def method_not_allowed(message: str | None = None) -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        message or "the server does not allow this method on the requested resource",
    )


def unsupported_media_type(content_type: str, accepted: list[str], why: str = "") -> ApiError:
    message = (
        f"the body of the request was in an unknown format ({content_type or 'none'}) - "
        f"accepted media types include: {', '.join(accepted)}"
    )
    if why:
        message = f"{message}; {why}"
    return ApiError(415, "UnsupportedMediaType", message)


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


def go_value(value: Any) -> str:
    """A value in a message the way kube-apiserver prints it: strings quoted, the rest as JSON."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return "null"
    return json.dumps(value, sort_keys=True)


TypeNames = tuple[tuple[type | tuple[type, ...], str], ...]

# How the API server's parts name a decoded JSON value's type in their messages (bool first:
# a bool is an int in Python; each table ends with what its part says of anything else — a
# YAML body can hold a date, say).
GO_TYPES: TypeNames = (  # unstructured's accessors (%T of the value)
    (type(None), "<nil>"),
    (bool, "bool"),
    (int, "int64"),
    (float, "float64"),
    (str, "string"),
    (dict, "map[string]interface {}"),
    (object, "[]interface {}"),
)
JSON_TYPES: TypeNames = (  # encoding/json's UnmarshalTypeError
    (bool, "bool"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
    (object, "number"),
)
SCHEMA_TYPES: TypeNames = (  # the OpenAPI schema validator
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
    (object, "null"),
)


def type_name(value: Any, names: TypeNames) -> str:
    """`value`'s type as `names` (one of the tables above) calls it."""
    return next(name for kind, name in names if isinstance(value, kind))
