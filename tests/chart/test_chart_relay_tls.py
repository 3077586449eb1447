"""The status relay's TLS in the chart: a CA and a certificate for the Service's DNS names, made
at install and kept across upgrades (Helm's `lookup`, against the emulated API server), or the
user's Secret; mounted read-only into the operator, which the Service's relay port reaches;
plain HTTP, as before, only when asked for."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import NAMESPACE, RELEASE, Obj, Rendered, chart, operator_env, render
from cryptography import x509
from helm_python import Config

from avatar_operator import settings as settings_mod

SECRET = f"{RELEASE}-relay-tls"
SERVICE_NAMES = [
    RELEASE,
    f"{RELEASE}.{NAMESPACE}",
    f"{RELEASE}.{NAMESPACE}.svc",
    f"{RELEASE}.{NAMESPACE}.svc.cluster.local",
]


def _operator(rendered: Rendered) -> Obj:
    spec: Obj = rendered.one("Deployment", RELEASE)["spec"]["template"]["spec"]
    return spec


def _certificate(data: dict[str, str], key: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(data[key]))


def test_the_certificate_names_the_service_and_its_ca_signed_it() -> None:
    secret = render().one("Secret", SECRET)
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    cert = _certificate(secret["data"], "tls.crt")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == SERVICE_NAMES
    cert.verify_directly_issued_by(_certificate(secret["data"], "ca.crt"))


def test_the_operator_serves_the_relay_with_the_mounted_secret() -> None:
    rendered = render()
    env = operator_env(rendered)
    pod = _operator(rendered)
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "relay-tls")
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "relay-tls")
    assert volume["secret"]["secretName"] == SECRET
    for setting, key in (("CERT", "tls.crt"), ("KEY", "tls.key"), ("CA", "ca.crt")):
        assert env[f"AVATAR_OPERATOR_STATUS_RELAY_{setting}_FILE"] == f"{mount['mountPath']}/{key}"
    assert {"name": "relay", "containerPort": 8443, "protocol": "TCP"} in container["ports"]
    service = rendered.one("Service", RELEASE)
    assert {"name": "relay", "port": 8443, "targetPort": "relay", "protocol": "TCP"} in service[
        "spec"
    ]["ports"]
    # workers are sent to a name the certificate holds; the probes stay on plain http
    assert env["AVATAR_OPERATOR_STATUS_URL"] == f"https://{SERVICE_NAMES[2]}:8443"
    assert container["readinessProbe"]["httpGet"]["port"] == "http"


def test_an_existing_secret_is_mounted_and_none_is_made() -> None:
    rendered = render({"statusRelay": {"tls": {"existingSecret": "relay-from-cert-manager"}}})
    assert rendered.named("Secret", SECRET) is None
    volume = next(v for v in _operator(rendered)["volumes"] if v["name"] == "relay-tls")
    assert volume["secret"]["secretName"] == "relay-from-cert-manager"
    test_pod = rendered.one("Pod")
    assert test_pod["spec"]["volumes"][0]["secret"]["secretName"] == "relay-from-cert-manager"


def test_tls_off_keeps_the_plain_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = render({"statusRelay": {"tls": {"enabled": False}}})
    assert rendered.named("Secret", SECRET) is None
    env = operator_env(rendered)
    assert env["AVATAR_OPERATOR_STATUS_URL"] == f"http://{RELEASE}.{NAMESPACE}.svc:8080"
    assert not [
        name
        for name in env
        if name.startswith("AVATAR_OPERATOR_STATUS_RELAY_")
        and (name != "AVATAR_OPERATOR_STATUS_RELAY_KEY")
    ]
    assert [p["name"] for p in rendered.one("Service", RELEASE)["spec"]["ports"]] == ["http"]
    assert "volumes" not in rendered.one("Pod")["spec"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert settings_mod.OperatorSettings().relay_tls is False


def _post(url: str, path: str, body: Obj) -> None:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def test_the_certificate_is_kept_across_upgrades(localcluster_process: Any) -> None:
    """`helm upgrade` renders with `lookup` answered by the cluster: the Secret the install made
    is found and its CA and certificate rendered again, byte for byte (a new CA would cut off
    the running sessions' workers). Without it (`helm template`, a first install), a new one."""
    api = localcluster_process.url
    _post(
        api,
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
    )
    config = Config(kubeconfig_path=Path(localcluster_process.kubeconfig_path), namespace=NAMESPACE)

    def upgrade() -> Obj:
        out = config.render(chart(), {}, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
        text = out[f"{chart().name}/templates/relay-tls-secret.yaml"]
        secret: Obj = yaml.safe_load(text)
        return secret

    installed = upgrade()
    assert upgrade()["data"] != installed["data"]  # nothing in the cluster yet: made anew
    _post(api, f"/api/v1/namespaces/{NAMESPACE}/secrets", installed)
    assert upgrade()["data"] == installed["data"]
    assert upgrade()["data"] == installed["data"]
