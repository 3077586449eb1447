"""kopf handlers: thin glue from watch events to `reconciler.Reconciler`.

Every handler finds the reconciler in kopf's `memo` (set by `runner.run`), so one process can
host several operators in tests. No handler adds a finalizer: children carry ownerReferences
(the garbage collector deletes them with the session) and the GPU reservation is released on the
session's DELETED event, so deleting a session never waits on the operator, and uninstalling the
operator never leaves sessions stuck in Terminating.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from avatar_operator import manifests, reconciler
from avatar_sdk import api

logger = logging.getLogger(__name__)

SESSION = (api.GROUP, api.VERSION, api.PLURAL)
WORKER_LABELS = {
    "app.kubernetes.io/managed-by": manifests.MANAGED_BY,
    "app.kubernetes.io/name": "avatar-worker",
}


def _reconciler(memo: Any) -> reconciler.Reconciler:
    found: reconciler.Reconciler = memo["reconciler"]
    return found


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    if "reconciler" not in memo:  # `kopf run`: build our half here, from the environment
        memo["reconciler"] = await _bootstrap()
    ours = _reconciler(memo)
    config = ours.settings
    # Silent watch stalls are kopf's most reported failure: bound every watch on both ends.
    settings.watching.server_timeout = config.watch_server_timeout_seconds
    settings.watching.client_timeout = config.watch_client_timeout_seconds
    settings.watching.connect_timeout = config.connect_timeout_seconds
    settings.networking.request_timeout = config.request_timeout_seconds
    settings.networking.connect_timeout = config.connect_timeout_seconds
    # kopf posts its log records as Events: only its warnings (our own Events tell the story)
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = manifests.MANAGED_BY
    # One replica acts at a time through our own Lease (leader.py); kopf's peering only pauses.
    settings.peering.standalone = True
    # Only event handlers are registered: kopf stores no progress and no diff base, so it
    # writes nothing to the sessions and needs no finalizer.
    await ours.rebuild()
    ours.spawn_forever(ours.run_sweeper(), "sweeper")


async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    await _reconciler(memo).aclose()
    api_ = memo.get("owned_api")
    if api_ is not None:
        await api_.aclose()


async def session_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Every session event: level-triggered, so no create/resume bookkeeping is needed.

    kopf runs one event of an object at a time, so a session is never admitted twice at once.
    (kopf's on.create/on.resume would add a diff-base annotation write per session and a deep
    diff of every event; the reconciler reads the state from the status instead.)
    """
    ours = _reconciler(memo)
    plain = _plain(body)
    ours.observe_session(type, plain)
    if ours.needs_admission(type, plain):
        await ours.admit(plain)


async def pod_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _reconciler(memo).observe_pod(type, _plain(body))


async def node_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _reconciler(memo).observe_node(type, _plain(body))


def _plain(body: kopf.Body) -> dict[str, Any]:
    """kopf's Body is a read-only view; the reconciler keeps plain dicts."""
    return {key: body[key] for key in body}


async def _bootstrap() -> reconciler.Reconciler:
    """For `kopf run -m avatar_operator.kopf_app`: settings from env, no leader election."""
    from avatar_operator import kube, metrics
    from avatar_operator import settings as settings_mod

    config = settings_mod.OperatorSettings()
    api_ = kube.Kube(await kube.load_api_client())
    key = config.status_relay_key or ""
    if not key:
        raise kopf.PermanentError(f"set {settings_mod.ENV_PREFIX}STATUS_RELAY_KEY")
    return reconciler.Reconciler(
        api_,
        config,
        metrics_=metrics.Metrics(),
        relay_key=key.encode(),
        status_url=config.status_url,
    )


def register(registry: kopf.OperatorRegistry) -> None:
    """Put the handlers into `registry` (one per operator, so tests can run several)."""
    group, version, plural = SESSION
    kopf.on.startup(registry=registry)(configure)
    kopf.on.cleanup(registry=registry)(shutdown)
    kopf.on.event(group, version, plural, registry=registry)(session_event)
    kopf.on.event("v1", "pods", labels=WORKER_LABELS, registry=registry)(pod_event)
    kopf.on.event("v1", "nodes", registry=registry)(node_event)
