"""Run the operator: API client, reconciler, HTTP endpoints, leader election, kopf.

`run()` is what `python -m avatar_operator` calls, and what tests and the demo call in-process
against the emulated cluster: everything it starts, it stops when `stop` is set. The HTTP
endpoints are two servers: /healthz, /readyz and /metrics in plain HTTP on `http_port` (probes
and Prometheus), and the workers' status relay in TLS on `status_relay_port`
(`avatar_operator.relaytls`) — or beside the others, in plain HTTP, when no certificate is
configured.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import ssl
from typing import Any

import kopf
from aiohttp import web

from avatar_operator import handlers, kube, launch, leader, metrics, reconciler, relay, relaytls
from avatar_operator import settings as settings_mod
from avatar_operator.pools import relay as pool_relay

logger = logging.getLogger(__name__)


def _connection_info(api_client: Any) -> kopf.ConnectionInfo:
    """kopf logs in with the same configuration as our own client (one source of truth)."""
    config = api_client.configuration
    token = (config.api_key or {}).get("authorization") or (config.api_key or {}).get("BearerToken")
    if token and token.lower().startswith("bearer "):
        token = token[len("bearer ") :]
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        token=token,
        default_namespace=None,
    )


async def _serve(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    return runner


class Operator:
    """One operator replica and everything it started."""

    def __init__(self, settings: settings_mod.OperatorSettings, api_: kube.Kube) -> None:
        self.settings = settings
        self.api = api_
        self.metrics = metrics.Metrics()
        key = settings.status_relay_key
        if key is None:
            logger.warning(
                "no status relay key configured: generated one for this process; workers of a "
                "failed-over replica will have to be restarted (set %sSTATUS_RELAY_KEY)",
                settings_mod.ENV_PREFIX,
            )
            key = secrets.token_hex(32)
        # the relay's certificate: a file missing or broken stops the operator here, named
        self.tls = (
            relaytls.ServingTLS(
                settings.status_relay_cert_file,
                settings.status_relay_key_file,
                settings.status_relay_ca_file,
            )
            if settings.status_relay_cert_file and settings.status_relay_key_file
            else None
        )
        if self.tls is None and settings.http_port:
            logger.warning(
                "the status relay serves plain HTTP: workers' status credentials cross the "
                "network in the clear; set %sSTATUS_RELAY_CERT_FILE and _KEY_FILE (the chart's "
                "statusRelay.tls does)",
                settings_mod.ENV_PREFIX,
            )
        self.reconciler = reconciler.Reconciler(
            api_,
            settings,
            metrics_=self.metrics,
            relay_key=key.encode(),
            status_url=settings.status_url,
            relay_ca=self._relay_ca,
        )
        self.identity = settings.identity or f"{socket.gethostname()}-{os.getpid()}"
        self.elector = (
            leader.LeaderElector(
                api_,
                namespace=settings.operator_namespace,
                name=settings.lease_name,
                identity=self.identity,
                lease_duration_seconds=settings.lease_duration_seconds,
                renew_seconds=settings.lease_renew_seconds,
            )
            if settings.leader_election
            else None
        )
        self.kopf_ready = asyncio.Event()
        # POST /launch for agents that still call a dispatcher: every replica serves it (it
        # only creates sessions through the API; the active replica reconciles them)
        self.launcher = (
            launch.LaunchServer(api_, settings, metrics_=self.metrics)
            if settings.dispatcher_port
            else None
        )
        self.relay = relay.StatusRelay(
            key.encode(),
            lookup=self.reconciler.session,
            apply=self.reconciler.apply_worker_report,
            is_active=self.is_active,
        )
        self.assignments = pool_relay.AssignmentRelay(
            key.encode(), lambda: self.reconciler.pools, self.is_active
        )

    def is_active(self) -> bool:
        """True while this replica acts (holds the Lease, or runs without election)."""
        return self.kopf_ready.is_set() and (self.elector is None or self.elector.is_leader)

    def _relay_ca(self) -> str | None:
        """The CA certificate (PEM) workers verify the relay with; None without TLS."""
        return self.tls.ca_pem if self.tls is not None else None

    async def serve_http(self, host: str = "0.0.0.0") -> list[web.AppRunner]:
        """/healthz (alive), /readyz (active), /metrics, and the workers' status relay (on a
        TLS port of its own when it has a certificate). Returns the servers to clean up."""
        runners = []
        if self.tls is not None:
            relay_app = web.Application(client_max_size=64 * 1024)
            relay_app.router.add_routes(self.relay.routes())
            # a warm worker's assignment carries its join token: over TLS only
            relay_app.router.add_routes(self.assignments.routes())
            port = self.settings.status_relay_port
            runners.append(await _serve(relay_app, host, port, self.tls.context))
        if self.settings.http_port == 0:
            return runners

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"ok": True, "identity": self.identity})

        async def readyz(_: web.Request) -> web.Response:
            active = self.is_active()
            return web.json_response({"active": active}, status=200 if active else 503)

        async def metrics_handler(_: web.Request) -> web.Response:
            self.metrics.leader.set(1 if self.is_active() else 0)
            self.reconciler.publish_gauges()
            return web.Response(
                body=self.metrics.exposition(), content_type="text/plain", charset="utf-8"
            )

        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics_handler)
        if self.tls is None:
            app.router.add_routes(self.relay.routes())
        runners.append(await _serve(app, host, self.settings.http_port))
        return runners

    async def run_kopf(self, stop: asyncio.Event) -> None:
        registry = kopf.OperatorRegistry()
        handlers.register(registry)
        info = _connection_info(self.api.api_client)

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return info

        await kopf.operator(
            registry=registry,
            memo=kopf.Memo(reconciler=self.reconciler),
            standalone=True,
            clusterwide=self.settings.clusterwide,
            namespaces=self.settings.namespaces,
            stop_flag=stop,
            ready_flag=self.kopf_ready,
        )

    async def run(self, stop: asyncio.Event) -> None:
        http = await self.serve_http()
        launcher = await self.launcher.serve() if self.launcher is not None else None
        reload_atask = asyncio.create_task(self.tls.watch()) if self.tls is not None else None
        try:
            if self.elector is None:
                await self.run_kopf(stop)
            else:
                await self.elector.run(lambda: self.run_kopf(stop))
        finally:
            self.kopf_ready.clear()
            await self.reconciler.aclose()
            if reload_atask is not None:
                reload_atask.cancel()
                await asyncio.gather(reload_atask, return_exceptions=True)
            for server in http:
                await server.cleanup()
            if launcher is not None:
                await launcher.cleanup()


async def run(
    settings: settings_mod.OperatorSettings,
    *,
    kubeconfig: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    api_client = await kube.load_api_client(kubeconfig)
    api_ = kube.Kube(api_client)
    try:
        await Operator(settings, api_).run(stop or asyncio.Event())
    finally:
        await api_.aclose()
