"""kopf handlers: thin glue from watch events to `reconciler.Reconciler`.

Every handler finds the reconciler in kopf's `memo` (set by `runner.run`), so one process can
host several operators in tests. No handler adds a finalizer: children carry ownerReferences
(the garbage collector deletes them with the session) and the GPU reservation is released on the
session's DELETED event, so deleting a session never waits on the operator, and uninstalling the
operator never leaves sessions stuck in Terminating.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kopf

from avatar_operator import manifests, reconciler
from avatar_sdk import api, pools

logger = logging.getLogger(__name__)

SESSION = (api.GROUP, api.VERSION, api.PLURAL)
POOL = (pools.GROUP, pools.VERSION, pools.POOL_PLURAL)
POD_FIELD_SELECTOR = "status.phase!=Pending"
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
    # The watched namespaces are exact names and the CRD is installed before the operator (the
    # chart's crds/): kopf need not list or watch Namespaces and CRDs, so its RBAC need not
    # grant them (it still discovers the resources once, through API discovery).
    settings.scanning.disabled = True
    # Only event handlers are registered: kopf stores no progress and no diff base, so it
    # writes nothing to the sessions and needs no finalizer. Its default storages would still
    # deep-copy every body on every event to build a diff nobody reads (a fifth of the
    # operator's CPU in a burst); these two skip that work.
    settings.persistence.diffbase_storage = NoDiffBaseStorage()
    settings.persistence.progress_storage = NoProgressStorage()
    # Only the operator's own worker Pods stream to it, filtered by the API server: on a busy
    # cluster the Pods of everything else never reach the operator. And only once they have
    # left Pending: the three Pending events of a starting Pod (created, bound, containers
    # creating) need nothing from the operator, and each cost it as much CPU as starting a
    # session's Secret. A Pod deleted while still Pending sends no DELETED on this watch; the
    # reconciler's periodic Pod list (`Reconciler.resync_pods`) finds those.
    settings.watching.label_selectors["v1", "pods"] = manifests.SELECTOR
    settings.watching.field_selectors["v1", "pods"] = POD_FIELD_SELECTOR
    await ours.rebuild()
    ours.start()


async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    await _reconciler(memo).aclose()
    api_ = memo.get("owned_api")
    if api_ is not None:
        await api_.aclose()


async def session_event(type: str | None, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Every session event: level-triggered, so no create/resume bookkeeping is needed.

    A session that needs starting goes to the reconciler's admission queue (FIFO, a few
    workers, each session at most once in it, and under its own lock while it is started), so
    this handler returns at once and kopf moves on to the next event. (kopf's on.create/on.resume
    would add a diff-base annotation write per session and a deep diff of every event; the
    reconciler reads the state from the status instead.)
    """
    ours = _reconciler(memo)
    plain = _plain(event)
    ours.observe_session(type, plain)
    if ours.needs_admission(type, plain):
        ours.request_admission(reconciler.key_of(plain))


async def pod_event(type: str | None, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _reconciler(memo).observe_pod(type, _plain(event))


async def pool_event(type: str | None, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _reconciler(memo).pools.observe_pool(type, _plain(event))


async def node_event(type: str | None, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _reconciler(memo).observe_node(type, _plain(event))


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """No diff base: for an operator whose handlers are all `on.event` (they get no diff).

    kopf builds the "essence" of every body on every event (a deep copy) to detect changes for
    `on.create/update/resume` handlers. This operator registers none, so the essence is empty
    and nothing is stored. Registering a change handler requires kopf's default storage back.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class NoProgressStorage(kopf.ProgressStorage):
    """No handler progress: `on.event` handlers are called once per event, never retried."""

    def fetch(self, *, key: Any, body: kopf.Body) -> None:
        return None

    def store(self, *, key: Any, record: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        return None

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence  # nothing of ours is in it: no copy needed


def _plain(event: kopf.RawEvent) -> dict[str, Any]:
    """The object as the watch delivered it (the reconciler keeps plain dicts, not kopf's
    read-only `Body` views): a shallow copy, so that the reconciler's bookkeeping never writes
    into kopf's own copy."""
    return dict(event["object"])


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
    kopf.on.event(*POOL, registry=registry)(pool_event)
