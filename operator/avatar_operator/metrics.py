"""Prometheus metrics and the `/healthz` and `/metrics` endpoints.

One registry per operator instance (not the process-global default), so tests can run several
operators in one process and read each one's figures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import prometheus_client
from aiohttp import web

from avatar_sdk import api

logger = logging.getLogger(__name__)

# Seconds: spans from a fast placement to a slow image pull.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
# Seconds: a claim is a few API writes; fine up to 0.5 s, where a busy API server puts it
# (a quantile between two buckets is interpolated, so coarse ones blur it).
_CLAIM_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1,
    2.5,
)


class Metrics:
    """The operator's figures."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.sessions = prometheus_client.Gauge(
            "avatar_sessions",
            "AvatarSessions by phase, as this operator last saw them.",
            ["phase"],
            registry=self.registry,
        )
        self.time_to_scheduled = prometheus_client.Histogram(
            "avatar_time_to_scheduled_seconds",
            "From session creation to a GPU reserved.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_joined = prometheus_client.Histogram(
            "avatar_time_to_joined_seconds",
            "From session creation to the worker joined and publishing.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.launches = prometheus_client.Counter(
            "avatar_dispatcher_requests_total",
            "POST /launch requests, by HTTP status code.",
            ["code"],
            registry=self.registry,
        )
        self.reconcile_errors = prometheus_client.Counter(
            "avatar_reconcile_errors_total",
            "Reconcile steps that failed (they are retried).",
            ["step"],
            registry=self.registry,
        )
        self.placement_failures = prometheus_client.Counter(
            "avatar_placement_failures_total",
            "Placement attempts that found no GPU.",
            ["reason"],
            registry=self.registry,
        )
        self.sessions_ended = prometheus_client.Counter(
            "avatar_sessions_ended_total",
            "Sessions that ended, by end reason.",
            ["reason"],
            registry=self.registry,
        )
        self.leader = prometheus_client.Gauge(
            "avatar_operator_leader",
            "1 while this replica holds the leader Lease.",
            registry=self.registry,
        )
        self.gpu_vram_reserved = prometheus_client.Gauge(
            "avatar_gpu_vram_reserved_mib",
            "VRAM reserved for sessions and warm pool workers, summed over GPUs.",
            registry=self.registry,
        )
        self.pool_workers = prometheus_client.Gauge(
            "avatar_pool_workers",
            "Warm pool workers by pool and state (starting, ready, claimed).",
            ["namespace", "pool", "state"],
            registry=self.registry,
        )
        self.pool_claims = prometheus_client.Counter(
            "avatar_pool_claims_total",
            "Sessions that named a pool, by how they were served: warm (a ready worker) "
            "or cold (none was ready, or the session's settings differ from the pool's).",
            ["served"],
            registry=self.registry,
        )
        self.claim_latency = prometheus_client.Histogram(
            "avatar_pool_claim_seconds",
            "The operator's claim decision for a session naming a pool: from its admission's "
            "start to the claim recorded in the API (the worker Pod's conditional patch "
            "answered), whichever worker it took.",
            buckets=_CLAIM_BUCKETS,
            registry=self.registry,
        )
        for phase in api.Phase:
            self.sessions.labels(phase=phase.value).set(0)
        for served in ("warm", "cold"):
            self.pool_claims.labels(served=served)

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


async def serve(
    metrics: Metrics, port: int, healthy: Callable[[], bool], host: str = "0.0.0.0"
) -> web.AppRunner:
    """Serve /metrics and /healthz; the caller cleans the runner up."""

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")

    async def health_handler(_: web.Request) -> web.Response:
        ok = healthy()
        return web.json_response({"ok": ok}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", health_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("serving metrics and health", extra={"port": port})
    return runner
