"""The status relay in TLS on a port of its own, the probes and metrics in plain HTTP on theirs,
and every worker given the relay's CA; without a certificate, today's plain relay, with a
warning."""

from __future__ import annotations

import base64
import logging
from typing import Any

import aiohttp
import pytest
from lifecycle_support import Env, free_port, phase_is

from avatar_sdk import api, workerenv


def _relay_path(name: str) -> str:
    return f"/apis/{api.GROUP}/{api.VERSION}/namespaces/agents/{api.PLURAL}/{name}/status"


@pytest.mark.realcluster
async def test_the_relay_serves_tls_and_each_worker_gets_its_ca(env: Env, manifest: Any) -> None:
    operator = await env.start_operator()
    assert operator.settings.status_url is not None
    assert operator.settings.status_url.startswith("https://127.0.0.1:")
    env.create(manifest("t1"))
    await env.wait_session("t1", phase_is("Starting"))

    secret = env.get("secrets", "t1-token")
    assert secret is not None
    ca = base64.b64decode(secret["data"][workerenv.STATUS_CA_KEY]).decode()
    assert ca == env.relay_tls.ca_file.read_text()
    pod = await env.wait_for("pods", "t1-worker")
    container = pod["spec"]["containers"][0]
    worker_env = {e["name"]: e.get("value") for e in container["env"]}
    assert worker_env["AVATAR_STATUS_URL"] == operator.settings.status_url
    assert worker_env["AVATAR_STATUS_CA_FILE"] == f"{workerenv.TOKEN_DIR}/status-ca.crt"
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "token")
    assert {"key": workerenv.STATUS_CA_KEY, "path": "status-ca.crt"} in volume["secret"]["items"]

    assert (await env.report(operator, "t1", {"phase": "Joined"})).status == 200
    await env.wait_session("t1", phase_is("Joined"))

    # the plain port keeps the probes and metrics, and no longer takes reports
    plain = f"http://127.0.0.1:{operator.settings.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{plain}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{plain}/metrics") as response:
            assert response.status == 200
        headers = {"Authorization": f"Bearer {env.status_token('t1')}"}
        async with http.patch(
            plain + _relay_path("t1"), json={"status": {"fps": 30.0}}, headers=headers
        ) as response:
            assert response.status == 404


async def test_without_a_certificate_the_relay_is_plain_http_with_a_warning(
    env: Env, manifest: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="avatar_operator.runner")
    port = free_port()
    operator = await env.start_operator(
        http_port=port,
        status_url=f"http://127.0.0.1:{port}",
        status_relay_cert_file=None,
        status_relay_key_file=None,
        status_relay_ca_file=None,
    )
    env.create(manifest("p1"))
    await env.wait_session("p1", phase_is("Starting"))
    secret = env.get("secrets", "p1-token")
    assert secret is not None and workerenv.STATUS_CA_KEY not in secret["data"]
    pod = await env.wait_for("pods", "p1-worker")
    assert "AVATAR_STATUS_CA_FILE" not in {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    assert (await env.report(operator, "p1", {"phase": "Joined"})).status == 200
    await env.wait_session("p1", phase_is("Joined"))
    warnings = [r for r in caplog.records if "status relay serves plain HTTP" in r.getMessage()]
    assert len(warnings) == 1
