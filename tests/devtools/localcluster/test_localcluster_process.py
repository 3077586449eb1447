"""The command line and the server as a child process: blocking clients, controls, kopf."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException
from localcluster_helpers import WIDGET_GROUP, until, widget, widget_crd

from avatar_devtools.localcluster import cluster, kopfrun, kubeconfig
from avatar_sdk import api
from avatar_sdk import crd as sdk_crd


def client_for(process: cluster.ClusterProcess) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(
        config_file=str(process.kubeconfig_path), client_configuration=configuration
    )
    return kubernetes.client.ApiClient(configuration)


def test_blocking_client_against_the_process(localcluster_process: cluster.ClusterProcess) -> None:
    with client_for(localcluster_process) as client:
        core = kubernetes.client.CoreV1Api(client)
        nodes = core.list_node()
        assert [n.metadata.name for n in nodes.items] == ["gpu-node-0", "gpu-node-1"]
        core.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": "p1"},
                "spec": {"containers": [{"name": "c", "image": "x:1"}], "restartPolicy": "Never"},
            },
        )
        deadline = time.monotonic() + 10
        while core.read_namespaced_pod("p1", "default").status.phase != "Running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        localcluster_process.control(
            "fail-pod", {"namespace": "default", "name": "p1", "reason": "Evicted"}
        )
        deadline = time.monotonic() + 10
        while (pod := core.read_namespaced_pod("p1", "default")).status.phase != "Failed":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert pod.status.reason == "Evicted"
        localcluster_process.control("cordon-node", {"name": "gpu-node-1"})
        assert core.read_node("gpu-node-1").spec.unschedulable is True
        localcluster_process.control("remove-node", {"name": "gpu-node-0"})
        assert [n.metadata.name for n in core.list_node().items] == ["gpu-node-1"]


def test_cli_loads_crds_and_manifests_and_cleans_up(tmp_path: Path) -> None:
    crd_file = tmp_path / "crds.yaml"
    crd_file.write_text(yaml.safe_dump_all([sdk_crd.custom_resource_definition(), widget_crd()]))
    manifests = tmp_path / "objects.yaml"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "videosdk"},
        "stringData": {"k": "v"},
    }
    manifests.write_text(yaml.safe_dump_all([secret, widget("w1")]))
    kubeconfig_path = tmp_path / "kubeconfig"
    process = cluster.ClusterProcess(
        kubeconfig_path,
        crds=[crd_file],
        extra_args=["--apply", str(manifests), "--log-level", "WARNING"],
    )
    with process, client_for(process) as client:
        custom = kubernetes.client.CustomObjectsApi(client)
        found = custom.get_namespaced_custom_object(WIDGET_GROUP, "v1", "default", "widgets", "w1")
        assert found["spec"]["size"] == 3
        assert (
            kubernetes.client.CoreV1Api(client).read_namespaced_secret("videosdk", "default").data
        )
        session = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": "s1"},
            "spec": {"roomId": "abc", "video": {"fps": 500}},
        }
        with pytest.raises(ApiException) as refused:
            custom.create_namespaced_custom_object(
                api.GROUP, api.VERSION, "default", api.PLURAL, session
            )
        assert refused.value.status == 422
        assert "spec.video.fps" in refused.value.body
    assert process.process is not None and process.process.returncode == 0
    assert not kubeconfig_path.exists()


def test_cli_refuses_a_crd_a_real_server_refuses(tmp_path: Path) -> None:
    crd_file = tmp_path / "crd.yaml"
    bad = widget_crd()
    bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "patternProperties"
    ] = {"^x": {"type": "string"}}
    crd_file.write_text(yaml.safe_dump(bad))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "avatar_devtools.localcluster",
            "--kubeconfig",
            str(tmp_path / "kc"),
            "--crd",
            str(crd_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "patternProperties is not supported" in result.stderr


def test_sigint_stops_the_cli(tmp_path: Path) -> None:
    process = cluster.ClusterProcess(tmp_path / "kubeconfig", extra_args=["--log-level", "WARNING"])
    process.start()
    assert process.process is not None
    assert kubeconfig.server_of(process.kubeconfig_path) == process.url
    process.process.send_signal(signal.SIGINT)
    assert process.process.wait(timeout=10) == 0
    assert not process.kubeconfig_path.exists()


async def test_kopf_against_the_process(localcluster_process: cluster.ClusterProcess) -> None:
    with client_for(localcluster_process) as client:
        kubernetes.client.ApiextensionsV1Api(client).create_custom_resource_definition(widget_crd())
    seen: list[str] = []
    registry = kopf.OperatorRegistry()

    @kopf.on.create(WIDGET_GROUP, "v1", "widgets", registry=registry)
    def record(name: str, **_: Any) -> None:
        seen.append(name)

    settings = kopfrun.fast_settings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage()
    watched = [f"widgets.{WIDGET_GROUP}"]
    async with kopfrun.KopfOperator(
        localcluster_process.url, registry=registry, settings=settings, watching=watched
    ):
        with client_for(localcluster_process) as client:
            custom = kubernetes.client.CustomObjectsApi(client)
            custom.create_namespaced_custom_object(
                WIDGET_GROUP, "v1", "default", "widgets", widget("w1")
            )
        await until(lambda: seen == ["w1"])
