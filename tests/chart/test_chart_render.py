"""The chart renders with the default values and every ci/ value set, and what it renders is
valid Kubernetes (strict, for the oldest and newest version supported), hardened, and what the
operator's own settings accept."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
from chart_support import (
    KUBERNETES_VERSIONS,
    NAMESPACE,
    RELEASE,
    Obj,
    Rendered,
    operator_env,
    render,
    value_sets,
)
from helm_python import HelmRenderError, HelmValuesError

from avatar_operator import settings as settings_mod
from avatar_sdk.placement import engine

VALUE_SETS = value_sets()
# Objects of CRDs that Kubernetes' own schemas do not describe, with the fields they must have.
# (The AvatarPool is validated against the project's own CRD in test_chart_crd.)
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {"selector", "endpoints"},
    ("avatar-operator.dev/v1alpha1", "AvatarPool"): {"replicas", "whenEmpty", "template"},
}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render(VALUE_SETS[request.param])


def test_there_are_several_non_default_value_sets() -> None:
    names = set(VALUE_SETS)
    assert {
        "single-namespace-values.yaml",
        "existing-secret-values.yaml",
        "no-metrics-values.yaml",
        "gpu-inventory-values.yaml",
        "dispatcher-values.yaml",
        "kind-values.yaml",
        "pool-values.yaml",
    } <= names


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(rendered: Rendered, version: str) -> None:
    for obj in rendered.objects:
        required = CUSTOM_KINDS.get((obj["apiVersion"], obj["kind"]))
        if required is not None:
            assert required <= set(obj["spec"]), obj["kind"]
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on {version}: {exc.message}")


def test_objects_are_labelled_and_namespaced(rendered: Rendered) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for obj in rendered.objects:
        meta = obj["metadata"]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, meta["name"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "avatar-operator-0.1.0"
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in meta
        else:
            assert meta["namespace"], meta["name"]


def test_every_pod_is_hardened(rendered: Rendered) -> None:
    for name, spec in rendered.pod_specs():
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec.get("enableServiceLinks") is False, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["privileged"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert container["resources"]["requests"], name
            assert container["resources"]["limits"]["memory"], name


def test_only_the_operator_holds_a_service_account_token(rendered: Rendered) -> None:
    for name, spec in rendered.pod_specs():
        expected = name == RELEASE  # the operator's Deployment
        assert spec["automountServiceAccountToken"] is expected, name
    for account in rendered.of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_the_videosdk_secret_reaches_no_pod(rendered: Rendered) -> None:
    """The operator reads it through the API; no Pod mounts it or has it in its env."""
    env = operator_env(rendered)
    credentials = env["AVATAR_OPERATOR_DEFAULT_CREDENTIALS_SECRET"]
    for name, spec in rendered.pod_specs():
        text = json.dumps(spec)
        assert f'"secretName": "{credentials}"' not in text, name
        assert f'"name": "{credentials}", "key"' not in text, name


def test_the_operator_deployment(rendered: Rendered) -> None:
    deployment = rendered.one("Deployment", RELEASE)
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        # /readyz is true on the leader only: a readiness probe on it would keep the standby
        # un-Ready forever and stall every rollout.
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    env = operator_env(rendered)
    replicas = deployment["spec"]["replicas"]
    assert env["AVATAR_OPERATOR_LEADER_ELECTION"] == ("true" if replicas > 1 else "false")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    if replicas > 1:
        spread = spec["topologySpreadConstraints"][0]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert spread["labelSelector"]["matchLabels"] == selector
        budget = rendered.one("PodDisruptionBudget")
        assert budget["spec"]["selector"]["matchLabels"] == selector


def test_the_operator_accepts_its_environment(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The env the chart writes is what `python -m avatar_operator` validates at start-up."""
    for name in list(__import__("os").environ):
        if name.startswith(settings_mod.ENV_PREFIX):
            monkeypatch.delenv(name)
    env = operator_env(rendered)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = settings_mod.OperatorSettings()
    assert settings.operator_namespace == NAMESPACE
    assert settings.status_url == (
        f"https://{RELEASE}.{NAMESPACE}.svc:8443"
        if settings.relay_tls
        else f"http://{RELEASE}.{NAMESPACE}.svc:8080"
    )
    assert settings.identity == "avatar-operator-7d9f8-abcde"
    assert settings.http_port == 8080
    # every AVATAR_OPERATOR_* the chart sets is a setting, except those of the dispatcher,
    # whose settings land with it
    known = {
        settings_mod.ENV_PREFIX + f.upper() for f in settings_mod.OperatorSettings.model_fields
    }
    unknown = {n for n in env if n not in known and not n.startswith("AVATAR_OPERATOR_DISPATCHER_")}
    assert not unknown


def test_the_placement_settings_are_the_engines(rendered: Rendered) -> None:
    env = operator_env(rendered)
    placement = engine.Settings.model_validate_json(env["AVATAR_OPERATOR_PLACEMENT"])
    assert placement.strategy.value in ("ranked", "best-fit", "first-fit", "spread")


def test_gpu_inventory_overrides_reach_the_placement_engine() -> None:
    values = VALUE_SETS["gpu-inventory-values.yaml"]
    env = operator_env(render(values))
    placement = engine.Settings.model_validate_json(env["AVATAR_OPERATOR_PLACEMENT"])
    inventory = placement.inventory
    assert (inventory.headroom_mib, inventory.max_sessions_per_gpu) == (1024, 12)
    assert [p.match_labels for p in inventory.pools] == [
        pool["matchLabels"] for pool in values["gpu"]["pools"]
    ]
    assert inventory.pools[0].vram_mib == 81559 and inventory.pools[0].gpu_count == 8
    assert inventory.pools[1].headroom_mib == 2048 and inventory.pools[1].max_sessions_per_gpu == 4
    assert (placement.strategy.value, placement.window) == ("best-fit", 8)
    assert (placement.queue.starvation_seconds, placement.queue.max_passes) == (10, 4)
    assert env["AVATAR_OPERATOR_GPU_PINNING"] == "resource"
    assert env["AVATAR_OPERATOR_WORKER_RUNTIME_CLASS"] == "nvidia"
    assert env["AVATAR_OPERATOR_WORKER_IMAGE"] == "registry.example.com/avatar/worker:0.1.0-cu128"
    assert (env["AVATAR_OPERATOR_WORKER_CPU_LIMIT"], env["AVATAR_OPERATOR_WORKER_MEMORY"]) == (
        "2",
        "3Gi",
    )
    default = engine.Settings.model_validate_json(
        operator_env(render())["AVATAR_OPERATOR_PLACEMENT"]
    )
    assert default == engine.Settings()  # the chart's defaults are the engine's


def test_the_default_install_watches_everything_with_videosdk() -> None:
    rendered = render()
    env = operator_env(rendered)
    assert env["AVATAR_OPERATOR_NAMESPACES"] == ""
    assert env["AVATAR_OPERATOR_WORKER_TRANSPORT"] == "videosdk"
    assert env["AVATAR_OPERATOR_DEFAULT_CREDENTIALS_SECRET"] == "videosdk-credentials"
    assert env["AVATAR_OPERATOR_DISPATCHER_PORT"] == "0"
    assert env["AVATAR_OPERATOR_WORKER_IMAGE"] == "ghcr.io/avatar-operator/worker:0.1.0"
    assert "AVATAR_OPERATOR_WORKER_LOCAL_ROOM_URL" not in env
    assert not [s for s in rendered.of_kind("Secret") if s["metadata"]["name"].endswith("videosdk")]
    relay = rendered.one("Secret", f"{RELEASE}-relay")
    assert len(relay["data"]["key"]) >= 32
    assert {s["metadata"]["name"] for s in rendered.of_kind("Service")} == {
        RELEASE,
        f"{RELEASE}-metrics",
    }


def test_existing_secrets_are_referenced_not_created() -> None:
    rendered = render(VALUE_SETS["existing-secret-values.yaml"])
    env = operator_env(rendered)
    assert env["AVATAR_OPERATOR_DEFAULT_CREDENTIALS_SECRET"] == "prod-videosdk"
    assert env["AVATAR_OPERATOR_DEFAULT_API_KEY_KEY"] == "VIDEOSDK_API_KEY"
    assert env["AVATAR_OPERATOR_DEFAULT_SECRET_KEY"] == "VIDEOSDK_SECRET_KEY"
    assert rendered.of_kind("Secret") == []
    container = rendered.one("Deployment", RELEASE)["spec"]["template"]["spec"]["containers"][0]
    key = next(v for v in container["env"] if v["name"] == "AVATAR_OPERATOR_STATUS_RELAY_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "avatar-relay-key", "key": "key"}


def test_credentials_from_values_are_put_in_a_secret_with_a_warning() -> None:
    rendered = render(VALUE_SETS["credentials-from-values-values.yaml"])
    secret = rendered.one("Secret", f"{RELEASE}-videosdk")
    assert secret["data"] == {"apiKey": "Y2ktYXBpLWtleQ==", "secret": "Y2ktYXBpLXNlY3JldA=="}
    assert (
        operator_env(rendered)["AVATAR_OPERATOR_DEFAULT_CREDENTIALS_SECRET"]
        == secret["metadata"]["name"]
    )
    assert "WARNING" in rendered.notes and "helm get values" in rendered.notes


def test_the_local_room_replaces_videosdk() -> None:
    rendered = render(VALUE_SETS["kind-values.yaml"])
    env = operator_env(rendered)
    assert env["AVATAR_OPERATOR_WORKER_TRANSPORT"] == "local"
    assert env["AVATAR_OPERATOR_WORKER_LOCAL_ROOM_URL"] == (
        f"ws://{RELEASE}-room.{NAMESPACE}.svc:8765/rooms/{{roomId}}"
    )
    room = rendered.one("Deployment", f"{RELEASE}-room")
    container = room["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["avatar-worker", "room", "--host", "0.0.0.0", "--port", "8765"]
    assert container["image"] == env["AVATAR_OPERATOR_WORKER_IMAGE"]
    service = rendered.one("Service", f"{RELEASE}-room")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["nodePort"] == 30765
    assert service["spec"]["selector"] == room["spec"]["selector"]["matchLabels"]
    # placeholder credentials: the operator still signs join tokens; VideoSDK is never asked
    placeholder = rendered.one("Secret", f"{RELEASE}-videosdk")
    assert env["AVATAR_OPERATOR_DEFAULT_CREDENTIALS_SECRET"] == f"{RELEASE}-videosdk"
    assert set(placeholder["data"]) == {"apiKey", "secret"}
    assert "LOCAL ROOM" in rendered.notes


def test_a_room_server_of_ones_own_replaces_the_charts() -> None:
    url = "ws://my-rooms.default.svc:9000/rooms/{roomId}"
    rendered = render({"localRoom": {"enabled": True, "url": url}})
    env = operator_env(rendered)
    assert env["AVATAR_OPERATOR_WORKER_TRANSPORT"] == "local"
    assert env["AVATAR_OPERATOR_WORKER_LOCAL_ROOM_URL"] == url
    assert not [o for o in rendered.objects if o["metadata"]["name"] == f"{RELEASE}-room"]
    test_pod = next(o for o in rendered.objects if o["kind"] == "Pod")
    hook_env = {e["name"]: e.get("value") for e in test_pod["spec"]["containers"][0]["env"]}
    assert hook_env["ROOM_URL"] == "http://my-rooms.default.svc:9000/healthz"
    assert url in rendered.notes and "port-forward svc/" not in rendered.notes
    with pytest.raises(HelmValuesError, match="/localRoom/url"):
        render({"localRoom": {"enabled": True, "url": "ws://my-rooms:9000/rooms/fixed"}})


def test_the_dispatcher_is_wired_when_enabled() -> None:
    values = VALUE_SETS["dispatcher-values.yaml"]
    rendered = render(values)
    env = operator_env(rendered)
    assert env["AVATAR_OPERATOR_DISPATCHER_PORT"] == "8090"
    assert env["AVATAR_OPERATOR_DISPATCHER_NAMESPACE"] == NAMESPACE
    assert env["AVATAR_OPERATOR_DISPATCHER_MAX_SESSIONS"] == "50"
    assert env["AVATAR_OPERATOR_DISPATCHER_RATE_PER_MINUTE"] == "30"
    template = json.loads(env["AVATAR_OPERATOR_DISPATCHER_SESSION_TEMPLATE"])
    assert template == values["dispatcher"]["sessionTemplate"]
    token_file = env["AVATAR_OPERATOR_DISPATCHER_TOKEN_FILE"]
    pod = rendered.one("Deployment", RELEASE)["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "dispatcher-token")
    assert token_file == f"{mount['mountPath']}/token" and mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "dispatcher-token")
    secret = rendered.one("Secret", volume["secret"]["secretName"])
    assert len(secret["data"]["token"]) >= 32
    service = rendered.one("Service", f"{RELEASE}-dispatcher")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 8090
    assert service["spec"]["ports"][0]["targetPort"] == "dispatcher"
    assert f"http://{RELEASE}-dispatcher.{NAMESPACE}.svc:8090/launch" in rendered.notes
    assert "base64 -d" in rendered.notes
    monitor = rendered.one("ServiceMonitor")
    metrics = rendered.one("Service", f"{RELEASE}-metrics")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    )
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_no_metrics_means_no_metrics_objects() -> None:
    rendered = render(VALUE_SETS["no-metrics-values.yaml"])
    assert rendered.named("Service", f"{RELEASE}-metrics") is None
    assert rendered.of_kind("ServiceMonitor") == rendered.of_kind("PodDisruptionBudget") == []
    assert "topologySpreadConstraints" not in rendered.one("Deployment")["spec"]["template"]["spec"]
    assert rendered.one("Service", RELEASE)  # workers still report their status


def test_the_helm_test_pod_checks_the_install() -> None:
    rendered = render(VALUE_SETS["kind-values.yaml"])
    pod = rendered.one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    env = {v["name"]: v["value"] for v in container["env"]}
    assert env["OPERATOR_URL"] == f"http://{RELEASE}.{NAMESPACE}.svc:8080"
    assert env["RELAY_URL"] == f"https://{RELEASE}.{NAMESPACE}.svc:8443"
    assert env["ROOM_URL"].endswith(":8765/healthz") and env["METRICS_URL"].endswith("/metrics")
    compile(container["command"][2], "helm-test", "exec")  # the script at least parses


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"videosdk": {"existingSecret": ""}},
            "videosdk.existingSecret: name the Secret with your VideoSDK API key",
        ),
        (
            {"videosdk": {"existingSecret": "", "apiKey": "k"}},
            "videosdk.apiKey and videosdk.secret",
        ),
        ({"leaderElection": {"enabled": False}}, "needs replicaCount=1"),
        ({"leaderElection": {"renewSeconds": 6}}, "at most half"),
        (
            {"watchNamespaces": ["agents"], "dispatcher": {"enabled": True}},
            'dispatcher.namespace "avatar-system" is not in watchNamespaces',
        ),
        ({"dispatcher": {"enabled": True, "port": 8080}}, "dispatcher.port must differ"),
        ({"statusRelay": {"port": 8080}}, "statusRelay.port must differ"),
        ({"dispatcher": {"enabled": True, "port": 8443}}, "statusRelay.port must differ"),
        (
            {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
            "needs metrics.enabled",
        ),
        ({"localRoom": {"service": {"nodePort": 30765}}}, "needs localRoom.service.type=NodePort"),
        (
            {"serviceAccount": {"create": False}},
            "serviceAccount.name: name an existing ServiceAccount",
        ),
        (
            {"watchNamespaces": ["agents"], "pool": {"create": True}},
            'the release namespace "avatar-system", which is not in watchNamespaces',
        ),
    ],
)
def test_wrong_values_fail_with_what_to_change(values: Obj, message: str) -> None:
    with pytest.raises(HelmRenderError, match=message.replace(".", r"\.")):
        render(values)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicaCount": 0}, "/replicaCount"),
        ({"workerImage": "x"}, "workerImage"),
        (
            {"worker": {"resources": {"requests": {"cpu": "a lot"}}}},
            "/worker/resources/requests/cpu",
        ),
        ({"gpu": {"pinning": "mig"}}, "/gpu/pinning"),
        ({"gpu": {"pools": [{"vramMB": 1}]}}, "vramMB"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
        ({"placement": {"strategy": "random"}}, "/placement/strategy"),
        ({"statusRelay": {"tls": {"enabled": "yes"}}}, "/statusRelay/tls/enabled"),
        ({"pool": {"replicas": -1}}, "/pool/replicas"),
        ({"pool": {"replicas": 501}}, "/pool/replicas"),
        ({"pool": {"whenEmpty": "Later"}}, "/pool/whenEmpty"),
        ({"pool": {"name": "Warm_Pool"}}, "/pool/name"),
        ({"pool": {"template": []}}, "/pool/template"),
        ({"pool": {"size": 2}}, "size"),
    ],
)
def test_the_schema_refuses_wrong_values(values: dict[str, Any], where: str) -> None:
    with pytest.raises(HelmValuesError, match=where):
        render(values)


def test_notes_tell_where_to_create_and_watch_a_session() -> None:
    notes = render(VALUE_SETS["single-namespace-values.yaml"]).notes
    assert "It serves AvatarSessions in: agents, support" in notes
    assert "kubectl apply -n agents -f -" in notes
    assert "kubectl get avs -n agents -w" in notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    assert "{{" not in notes and "<no value>" not in notes


def test_no_pool_unless_asked_for() -> None:
    assert render().of_kind("AvatarPool") == []


def test_the_pool_is_rendered_from_values_in_the_release_namespace() -> None:
    values = VALUE_SETS["pool-values.yaml"]
    pool = render(values).one("AvatarPool", "warm")
    assert pool["apiVersion"] == "avatar-operator.dev/v1alpha1"
    assert pool["metadata"]["namespace"] == NAMESPACE
    assert pool["metadata"]["labels"]["app.kubernetes.io/component"] == "pool"
    assert pool["spec"] == {
        "replicas": 2,
        "whenEmpty": "Wait",
        "template": values["pool"]["template"],
    }
    defaults = render({"pool": {"create": True}}).one("AvatarPool", "default")
    assert defaults["spec"] == {"replicas": 1, "whenEmpty": "Cold", "template": {}}
    zero = render({"pool": {"create": True, "replicas": 0}, "watchNamespaces": [NAMESPACE]})
    assert zero.one("AvatarPool", "default")["spec"]["replicas"] == 0


def test_notes_tell_how_to_use_and_scale_the_pool() -> None:
    assert "Warm pool" not in render().notes
    notes = render(VALUE_SETS["pool-values.yaml"]).notes
    assert f"AvatarPool {NAMESPACE}/warm keeps 2 idle worker(s) ready" in notes
    assert "sessions wait" in notes and "spec.poolRef.name: warm" in notes
    assert f"kubectl scale avp/warm -n {NAMESPACE} --replicas <N>" in notes
    assert "{{" not in notes and "<no value>" not in notes
