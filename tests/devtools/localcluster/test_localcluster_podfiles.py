"""podfiles read through an `Objects`: what a Pod references, the API server's projected
ServiceAccount volume written from fetched objects, downwardAPI files."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from avatar_devtools.localcluster import fleet, podfiles, podstatus

NS = "apps"


def _pod() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": NS,
            "uid": "u-1",
            "labels": {"app": "web", "tier": "front"},
        },
        "spec": {
            "nodeName": "n-0",
            "serviceAccountName": "runner",
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "env": [
                        {
                            "name": "KEY",
                            "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}},
                        },
                        {
                            "name": "MODE",
                            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "m"}},
                        },
                    ],
                    "envFrom": [{"configMapRef": {"name": "bulk"}}],
                }
            ],
            "volumes": [
                {"name": "files", "secret": {"secretName": "file-secret"}},
                {
                    "name": "kube-api-access-abcde",
                    "projected": {
                        "defaultMode": 0o644,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                }
                            },
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "path": "namespace",
                                            "fieldRef": {"fieldPath": "metadata.namespace"},
                                        }
                                    ]
                                }
                            },
                        ],
                    },
                },
                {
                    "name": "meta",
                    "downwardAPI": {
                        "items": [
                            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                            {"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}},
                        ]
                    },
                },
            ],
        },
    }


def _secret(name: str, **data: str) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"metadata": {"name": name, "namespace": NS}, "data": encoded}


def test_references_name_every_secret_and_configmap_and_token_source() -> None:
    secrets, configmaps = podfiles.references(_pod())
    assert secrets == {(NS, "env-secret"), (NS, "file-secret")}
    assert configmaps == {(NS, "settings"), (NS, "bulk"), (NS, "kube-root-ca.crt")}
    sources = podfiles.token_sources(_pod())
    assert [podfiles.token_key(s) for s in sources] == [("", 3607)]


def test_volumes_and_env_are_written_from_fetched_objects(tmp_path: Path) -> None:
    objects = podfiles.FetchedObjects(
        secrets={
            (NS, "env-secret"): _secret("env-secret", k="from-env"),
            (NS, "file-secret"): _secret("file-secret", password="hunter2"),
        },
        configmaps={
            (NS, "settings"): {"data": {"m": "fast"}},
            (NS, "bulk"): {"data": {"A": "1"}},
            (NS, "kube-root-ca.crt"): {"data": {"ca.crt": "CA PEM"}},
        },
        tokens={("", 3607): "the-token"},
    )
    files = podfiles.PodFiles(objects, fleet.KubeletConfig(), None, tmp_path)
    pod = _pod()
    run = podstatus.PodRun(
        uid="u-1", mode="process", node="n-0", pod_ip="198.18.0.5", containers={}
    )
    env = files.environment(pod, pod["spec"]["containers"][0], run)
    assert (env["KEY"], env["MODE"], env["A"]) == ("from-env", "fast", "1")
    volumes = files.write_volumes(pod, tmp_path, run)
    access = volumes["kube-api-access-abcde"]
    assert (access / "token").read_text() == "the-token"
    assert (access / "ca.crt").read_text() == "CA PEM"
    assert (access / "namespace").read_text() == NS
    assert (volumes["files"] / "password").read_text() == "hunter2"
    assert (volumes["meta"] / "labels").read_text() == 'app="web"\ntier="front"'
    assert (volumes["meta"] / "ip").read_text() == "198.18.0.5"


def test_an_absent_secret_is_a_setup_error(tmp_path: Path) -> None:
    objects = podfiles.FetchedObjects({}, {(NS, "bulk"): {"data": {}}}, {})
    files = podfiles.PodFiles(objects, fleet.KubeletConfig(), None, tmp_path)
    pod = _pod()
    run = podstatus.PodRun(uid="u-1", mode="process", node="n-0", pod_ip="", containers={})
    with pytest.raises(podfiles.PodSetupError) as error:
        files.environment(pod, pod["spec"]["containers"][0], run)
    assert error.value.reason == "CreateContainerConfigError"
    assert 'secret "env-secret" not found' in error.value.message
