"""Protobuf request bodies (what kubectl's typed `create` commands send), decoded (no kubectl):
bodies are built here by a small encoder of the wire format, as client-go writes them."""

from __future__ import annotations

import pytest

from avatar_devtools.localcluster import errors, protobuf


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    raw = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(raw)) + raw


def entry(number: int, key: str, value: bytes | str) -> bytes:
    return field(number, field(1, key) + field(2, value))


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = field(1, api_version) + field(2, kind)
    return protobuf.MAGIC + field(1, type_meta) + field(2, raw) + field(3, "") + field(4, "")


def meta(name: str, namespace: str = "") -> bytes:
    # as Go writes it: every string field, empty or not, and an empty creationTimestamp
    return field(
        1,
        field(1, name)
        + field(2, "")
        + field(3, namespace)
        + field(6, "")
        + field(7, 0)
        + field(8, b"")
        + entry(11, "app", "avatar"),
    )


def test_a_secret_as_kubectl_create_secret_generic_sends_it() -> None:
    raw = meta("videosdk", "avatar-system")
    raw += entry(2, "apiKey", b"k1") + entry(2, "secret", b"\x00\xff") + field(3, "")
    decoded = protobuf.decode(envelope("v1", "Secret", raw))
    assert decoded == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "videosdk", "namespace": "avatar-system", "labels": {"app": "avatar"}},
        "data": {"apiKey": "azE=", "secret": "AP8="},
    }


def test_a_namespace_a_configmap_and_a_serviceaccount() -> None:
    namespace = protobuf.decode(envelope("v1", "Namespace", meta("ns1")))
    assert namespace["metadata"] == {"name": "ns1", "labels": {"app": "avatar"}}
    configmap = protobuf.decode(
        envelope("v1", "ConfigMap", meta("cm") + entry(2, "a", "b") + field(4, 1))
    )
    assert configmap["data"] == {"a": "b"} and configmap["immutable"] is True
    account = protobuf.decode(
        envelope("v1", "ServiceAccount", meta("bot") + field(3, field(1, "pull")))
    )
    assert account["imagePullSecrets"] == [{"name": "pull"}]


def test_other_kinds_are_refused_with_415_naming_the_kind() -> None:
    with pytest.raises(errors.ApiError) as e:
        protobuf.decode(envelope("apps/v1", "Deployment", meta("d")))
    assert e.value.code == 415 and "not Deployment: send JSON" in e.value.message
    with pytest.raises(errors.ApiError) as e:
        protobuf.decode(b"{}")
    assert e.value.code == 400
    with pytest.raises(errors.ApiError) as e:
        protobuf.decode(protobuf.MAGIC + b"\x0a\x05ab")
    assert e.value.code == 400
