"""`meta.k8s.io/v1` Tables: what `kubectl get` prints, rendered by the server as the real one does.

kubectl asks for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` and prints the
columns it gets (those with `priority` > 0 only with `-o wide`). Columns and cells follow the
real server's printers:

- custom resources: NAME, then the version's `additionalPrinterColumns` (AGE alone when it has
  none), each cell the column's JSONPath evaluated on the object: `string` columns as the
  JSONPath printer prints the value, `integer`/`number`/`boolean` as JSON of that type (another
  type: an empty cell), `date` as an age (`5m3s`), a missing value as an empty cell;
- built-in kinds: kube-apiserver's printers (`printers`), NAME and CREATED AT for a kind
  without one.

Each row carries its object as `PartialObjectMetadata` (`includeObject=Metadata`, the default),
whole (`Object`) or not at all (`None`).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from avatar_devtools.localcluster import errors

logger = logging.getLogger(__name__)

TABLE_MEDIA = "application/json;as=Table;v=v1;g=meta.k8s.io"
NAME_DOC = (
    "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
AGE_DOC = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. "
    "It is not guaranteed to be set in happens-before order across separate operations. Clients "
    "may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by "
    "the system. Read-only. Null for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
Column = dict[str, Any]
Cells = Callable[[dict[str, Any]], list[Any]]
INCLUDE_OBJECT = ("Metadata", "Object", "None")


def wants_table(accept: str | None) -> bool:
    """Whether an Accept header asks for a meta.k8s.io Table first (kubectl get does)."""
    if not accept:
        return False
    for option in accept.split(","):
        params = {
            k.strip(): v.strip()
            for part in option.split(";")[1:]
            if "=" in part
            for k, v in [part.split("=", 1)]
        }
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return params.get("v") in ("v1", "v1beta1")
        if option.split(";")[0].strip() in ("application/json", "*/*"):
            return False
    return False


def table_version(accept: str) -> str:
    for option in accept.split(","):
        if "as=Table" in option and "g=meta.k8s.io" in option:
            return "v1beta1" if "v=v1beta1" in option else "v1"
    return "v1"


# --- ages -----------------------------------------------------------------------------------


def _parse_time(value: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """apimachinery's `duration.HumanDuration`: `42s`, `5m3s`, `3h10m`, `2d4h`, ..."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y" if days == 0 else f"{years}y{days}d"
    return f"{hours // 24 // 365}y"


def age(timestamp: Any, now: datetime.datetime | None = None) -> str:
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    when = _parse_time(timestamp)
    if when is None:
        return "<invalid>"
    current = now or datetime.datetime.now(datetime.UTC)
    return human_duration((current - when).total_seconds())


# --- JSONPath (the subset printer columns use) -----------------------------------------------

_SEGMENT = re.compile(
    r"""\.(?P<name>[A-Za-z0-9_\-/]+)"""
    r"""|\[(?P<index>-?\d+)\]"""
    r"""|\[['"](?P<quoted>[^'"]+)['"]\]"""
    r"""|\[\?\(@\.(?P<fkey>[A-Za-z0-9_.\-]+)\s*==\s*['"](?P<fvalue>[^'"]*)['"]\)\]"""
    r"""|\[\*\]|\.\*(?P<star>)"""
)


class JsonPath:
    """A column's JSONPath (`.status.phase`, `.spec.items[0].name`, `.a[?(@.type=="Ready")].s`,
    `.x[*].y`): the first value found, as kube-apiserver's printer uses the first result."""

    def __init__(self, expression: str) -> None:
        text = expression.strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        if text.startswith("$"):
            text = text[1:]
        self.steps: list[tuple[str, Any]] = []
        position = 0
        while position < len(text):
            match = _SEGMENT.match(text, position)
            if match is None:
                raise ValueError(f"unrecognized column definition {expression!r}")
            if match.group("name") is not None:
                self.steps.append(("key", match.group("name")))
            elif match.group("index") is not None:
                self.steps.append(("index", int(match.group("index"))))
            elif match.group("quoted") is not None:
                self.steps.append(("key", match.group("quoted")))
            elif match.group("fkey") is not None:
                self.steps.append(("filter", (match.group("fkey"), match.group("fvalue"))))
            else:
                self.steps.append(("all", None))
            position = match.end()

    def find(self, obj: Any) -> list[Any]:
        current = [obj]
        for kind, arg in self.steps:
            found: list[Any] = []
            for value in current:
                keyed = kind == "key" and isinstance(value, dict) and arg in value
                if keyed or (
                    kind == "index" and isinstance(value, list) and -len(value) <= arg < len(value)
                ):
                    found.append(value[arg])
                elif kind == "all" and isinstance(value, list):
                    found.extend(value)
                elif kind == "all" and isinstance(value, dict):
                    found.extend(value.values())
                elif kind == "filter" and isinstance(value, list):
                    key, wanted = arg
                    for item in value:
                        got = _dig(item, key.split("."))
                        if got is not None and _text(got) == wanted:
                            found.append(item)
            current = found
        return current


def _dig(value: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _text(value: Any) -> str:
    """A value as client-go's JSONPath printer prints it (strings bare, the rest as JSON)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e21 else json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _cell(column_type: str, value: Any) -> Any:
    """`cellForJSONValue`: a JSON value of the column's type, or None."""
    if value is None:
        return None
    if column_type == "string":
        return _text(value)
    if column_type == "integer" and isinstance(value, int | float) and type(value) is not bool:
        return int(value)
    if column_type == "number" and isinstance(value, int | float) and type(value) is not bool:
        return float(value)
    if column_type == "boolean" and type(value) is bool:
        return value
    if column_type == "date" and isinstance(value, str):
        return age(value) if _parse_time(value) else "<invalid>"
    return None


# --- printers (the built-in kinds' are in `printers`) -----------------------------------------


def name_column() -> Column:
    return {"name": "Name", "type": "string", "format": "name", "description": NAME_DOC}


def column(name: str, description: str = "", priority: int = 0) -> Column:
    return {
        "name": name,
        "type": "string",
        "format": "",
        "description": description,
        "priority": priority,
    }


class Printer:
    """The columns of one resource, how to fill a row, and the row's conditions (a finished
    Pod's `Completed`)."""

    def __init__(
        self,
        columns: list[Column],
        cells: Cells,
        conditions: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.columns = columns
        self.cells = cells
        self.conditions = conditions


def custom_printer(version: dict[str, Any]) -> Printer:
    """A CRD version's printer: NAME and its `additionalPrinterColumns` (or AGE)."""
    definitions = version.get("additionalPrinterColumns") or [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    ]
    columns = [name_column()]
    paths: list[tuple[str, JsonPath]] = []
    for definition in definitions:
        path = definition["jsonPath"]
        columns.append(
            {
                "name": definition["name"],
                "type": definition.get("type", "string"),
                "format": definition.get("format", ""),
                "description": definition.get("description")
                or f"Custom resource definition column (in JSONPath format): {path}",
                "priority": int(definition.get("priority") or 0),
            }
        )
        try:
            paths.append((definition.get("type", "string"), JsonPath(path)))
        except ValueError:
            logger.warning("printer column not understood", extra={"jsonPath": path})
            paths.append((definition.get("type", "string"), JsonPath("")))

    def cells(obj: dict[str, Any]) -> list[Any]:
        row: list[Any] = [obj["metadata"].get("name", "")]
        for column_type, path in paths:
            found = path.find(obj)
            row.append(_cell(column_type, found[0]) if found else None)
        return row

    return Printer(columns, cells)


def _default_cells(obj: dict[str, Any]) -> list[Any]:
    return [obj["metadata"].get("name", ""), obj["metadata"].get("creationTimestamp")]


DEFAULT = Printer(
    [
        name_column(),
        {"name": "Created At", "type": "date", "format": "", "description": AGE_DOC},
    ],
    _default_cells,
)


def _row_object(obj: dict[str, Any], include: str, version: str) -> Any:
    if include == "Object":
        return obj
    if include == "None":
        return None
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": obj.get("metadata") or {},
    }


def _row(printer: Printer, obj: dict[str, Any], include: str, version: str) -> dict[str, Any]:
    cells = printer.cells(obj)[: len(printer.columns)]
    row: dict[str, Any] = {"cells": cells, "object": _row_object(obj, include, version)}
    conditions = printer.conditions(obj) if printer.conditions is not None else []
    if conditions:
        row["conditions"] = conditions
    return row


def check_include(include: str | None) -> str:
    value = include or "Metadata"
    if value not in INCLUDE_OBJECT:
        raise errors.bad_request(f'unrecognized includeObject value: "{value}"')
    return value


def table(
    printer: Printer,
    objects: list[dict[str, Any]],
    *,
    resource_version: str,
    continue_token: str | None = None,
    include: str = "Metadata",
    version: str = "v1",
    headers: bool = True,
) -> dict[str, Any]:
    """A Table of `objects` (one object for a get, all the items for a list)."""
    meta: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        meta["continue"] = continue_token
    body: dict[str, Any] = {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": meta,
        "columnDefinitions": printer.columns if headers else [],
        "rows": [_row(printer, obj, include, version) for obj in objects],
    }
    return body
