"""Kubernetes protobuf request bodies, decoded for the few kinds kubectl sends that way.

kubectl's typed commands (`kubectl create namespace`, `create secret generic`, `create
configmap`, `create serviceaccount`) send `application/vnd.kubernetes.protobuf`, and client-go
does not fall back to JSON on a 415 for protobuf. The emulated API answers JSON always (the
client accepts it), so only request bodies need decoding, and only of these kinds: the
envelope (`k8s\\x00`, then a `runtime.Unknown` with the TypeMeta and the raw message) and the
messages of `k8s.io/api/core/v1` and `meta/v1` as far as they reach, field numbers from their
`generated.proto`. A field not listed is skipped, as protobuf readers do; any other kind is
refused with 415 naming it, so that the caller can send JSON instead.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

from avatar_devtools.localcluster import errors

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

# A message: field number → (JSON name, kind). Kinds: "string", "bytes" (base64 in JSON),
# "bool", "int", "time", "strings" (repeated string), "map" (string → string), "bytesmap"
# (string → bytes), or a nested message's fields (a dict); a list of one dict is a repeated
# message.
Message = dict[int, tuple[str, Any]]

_OWNER_REFERENCE: Message = {
    1: ("kind", "string"),
    3: ("name", "string"),
    4: ("uid", "string"),
    5: ("apiVersion", "string"),
    6: ("controller", "bool"),
    7: ("blockOwnerDeletion", "bool"),
}
_OBJECT_META: Message = {
    1: ("name", "string"),
    2: ("generateName", "string"),
    3: ("namespace", "string"),
    5: ("uid", "string"),
    6: ("resourceVersion", "string"),
    7: ("generation", "int"),
    8: ("creationTimestamp", "time"),
    11: ("labels", "map"),
    12: ("annotations", "map"),
    13: ("ownerReferences", [_OWNER_REFERENCE]),
    14: ("finalizers", "strings"),
}
_OBJECT_REFERENCE: Message = {
    1: ("kind", "string"),
    2: ("namespace", "string"),
    3: ("name", "string"),
    4: ("uid", "string"),
    5: ("apiVersion", "string"),
    6: ("resourceVersion", "string"),
    7: ("fieldPath", "string"),
}
KINDS: dict[tuple[str, str], Message] = {
    ("v1", "Namespace"): {
        1: ("metadata", _OBJECT_META),
        2: ("spec", {1: ("finalizers", "strings")}),
    },
    ("v1", "Secret"): {
        1: ("metadata", _OBJECT_META),
        2: ("data", "bytesmap"),
        3: ("type", "string"),
        4: ("stringData", "map"),
        5: ("immutable", "bool"),
    },
    ("v1", "ConfigMap"): {
        1: ("metadata", _OBJECT_META),
        2: ("data", "map"),
        3: ("binaryData", "bytesmap"),
        4: ("immutable", "bool"),
    },
    ("v1", "ServiceAccount"): {
        1: ("metadata", _OBJECT_META),
        2: ("secrets", [_OBJECT_REFERENCE]),
        3: ("imagePullSecrets", [{1: ("name", "string")}]),
        4: ("automountServiceAccountToken", "bool"),
    },
}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def done(self) -> bool:
        return self.position >= len(self.data)

    def varint(self) -> int:
        result = shift = 0
        while True:
            if self.position >= len(self.data):
                raise ValueError("truncated varint")
            byte = self.data[self.position]
            self.position += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    def field(self) -> tuple[int, int, Any]:
        """The next field: (number, wire type, value: an int or the bytes)."""
        key = self.varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            return number, wire, self.varint()
        if wire == 2:
            size = self.varint()
            value = self.data[self.position : self.position + size]
            if len(value) != size:
                raise ValueError("truncated field")
            self.position += size
            return number, wire, value
        if wire in (1, 5):
            width = 8 if wire == 1 else 4
            value = self.data[self.position : self.position + width]
            self.position += width
            return number, wire, int.from_bytes(value, "little")
        raise ValueError(f"unsupported wire type {wire}")


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    reader = _Reader(data)
    found = []
    while not reader.done():
        found.append(reader.field())
    return found


def _entry(data: bytes) -> tuple[str, bytes]:
    key, value = "", b""
    for number, _, raw in _fields(data):
        if number == 1:
            key = raw.decode()
        elif number == 2:
            value = raw
    return key, value


def _time(data: bytes) -> str:
    """A `meta/v1.Time` as RFC 3339; "" for the zero time (JSON null)."""
    seconds = next((raw for number, _, raw in _fields(data) if number == 1), 0)
    if not seconds:
        return ""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_message(data: bytes, schema: Message) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for number, _, raw in _fields(data):
        if number not in schema:
            continue
        name, kind = schema[number]
        # Go's protobuf writes every string and integer, empty or not; their JSON leaves the
        # empty ones out (`omitempty`), so that the server's defaults apply (Secret `type`)
        if kind == "string":
            if raw:
                obj[name] = raw.decode()
        elif kind == "bool":
            obj[name] = bool(raw)  # *bool fields: written only when set
        elif kind == "int":
            if raw:
                obj[name] = raw - (1 << 64) if raw >= 1 << 63 else raw
        elif kind == "time":
            if when := _time(raw):
                obj[name] = when
        elif kind == "strings":
            obj.setdefault(name, []).append(raw.decode())
        elif kind == "map":
            key, value = _entry(raw)
            obj.setdefault(name, {})[key] = value.decode()
        elif kind == "bytesmap":
            key, value = _entry(raw)
            obj.setdefault(name, {})[key] = base64.b64encode(value).decode()
        elif isinstance(kind, list):
            obj.setdefault(name, []).append(decode_message(raw, kind[0]))
        else:
            obj[name] = decode_message(raw, kind)
    return obj


def decode(body: bytes) -> dict[str, Any]:
    """A protobuf request body as the JSON object it stands for (415 for kinds not listed)."""
    if not body.startswith(MAGIC):
        raise errors.bad_request("the protobuf body does not start with the k8s envelope")
    try:
        unknown = {number: raw for number, _, raw in _fields(body[len(MAGIC) :])}
        type_meta = {number: raw for number, _, raw in _fields(unknown.get(1, b""))}
        api_version = type_meta.get(1, b"").decode()
        kind = type_meta.get(2, b"").decode()
        schema = KINDS.get((api_version, kind))
        if schema is None:
            raise errors.unsupported_media_type(
                MEDIA_TYPE,
                ["application/json"],
                f"localcluster decodes protobuf only for {', '.join(k for _, k in KINDS)}, "
                f"not {kind or 'this body'}: send JSON",
            )
        obj = decode_message(unknown.get(2, b""), schema)
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.bad_request(f"the protobuf body could not be decoded: {e}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}
