"""The reconciler's start path against a recording fake API: order of writes, deferred status,
restarts between writes, and what is parsed how often."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import time
from collections.abc import Callable
from typing import Any, cast

import jwt
import pytest

from avatar_devtools.localcluster import fleet
from avatar_operator import kube, manifests, metrics, reconciler
from avatar_operator.settings import OperatorSettings
from avatar_sdk import api

NS = "agents"
FLEET = {"nodes": [{"name": "gpu-a", "gpus": 2, "memoryMiB": 81559}]}


class FakeApi:
    """The calls the start path makes, recorded in order, with the API server's answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.version = 100
        self.delay = 0.0  # seconds each write takes: > 0 lets concurrent callers interleave

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any]:
        data = {"apiKey": b"key", "secret": b"s" * 32}
        return {"data": {k: base64.b64encode(v).decode() for k, v in data.items()}}

    async def create(self, obj: dict[str, Any], *, answer: bool = True) -> dict[str, Any]:
        self.calls.append((f"create {obj['kind']}", obj["metadata"].get("name", "")))
        return {}

    async def ensure(self, obj: dict[str, Any]) -> bool:
        key = (obj["kind"], obj["metadata"]["name"])
        self.calls.append((f"ensure {obj['kind']}", obj["metadata"]["name"]))
        await asyncio.sleep(self.delay)
        if key in self.objects:
            return False
        self.objects[key] = copy.deepcopy(obj)
        return True

    async def patch_session_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.calls.append(("patch status", status.get("phase") or ""))
        await asyncio.sleep(self.delay)
        body = self.sessions[name]
        merged = {**(body.get("status") or {}), **status}
        body = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": self._next_version()},
            "status": {k: v for k, v in merged.items() if v is not None},
        }
        self.sessions[name] = body
        return copy.deepcopy(body)

    def writes(self, kind: str) -> list[tuple[str, str]]:
        return [call for call in self.calls if call[0].startswith(kind)]

    # what a starting operator reads (`Reconciler.rebuild`)
    async def list_nodes(self) -> list[dict[str, Any]]:
        return [node.manifest() for node in fleet.parse(FLEET).nodes]

    async def list_sessions(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.sessions.values()))

    async def list_pods(self, selector: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (kind, _), o in self.objects.items() if kind == "Pod"]

    async def list_pools(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return []

    async def list_secrets(
        self, selector: str, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (kind, _), o in self.objects.items() if kind == "Secret"]

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.calls.append((f"delete {kind}", name))
        await asyncio.sleep(self.delay)
        return self.objects.pop((kind, name), None) is not None


def session(name: str, uid: str = "") -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid or f"uid-{name}",
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"roomId": f"room-{name}", "resources": {"vramMiB": 4096}},
    }


async def make_reconciler(
    fake: FakeApi, clock: Callable[[], float] = time.time
) -> reconciler.Reconciler:
    """A reconciler as a (re)started operator has it: state rebuilt from the (fake) API."""
    settings = OperatorSettings(
        status_relay_key="r" * 32, status_url="http://relay:8080", namespaces=[NS]
    )
    ours = reconciler.Reconciler(
        cast(kube.Kube, fake),
        settings,
        metrics_=metrics.Metrics(),
        relay_key=b"r" * 32,
        status_url=settings.status_url,
        clock=clock,
    )
    await ours.rebuild()
    return ours


def add(ours: reconciler.Reconciler, fake: FakeApi, body: dict[str, Any]) -> None:
    fake.sessions[body["metadata"]["name"]] = body
    ours.observe_session("ADDED", body)


async def test_secret_then_pod_then_the_starting_status() -> None:
    fake = FakeApi()
    ours = await make_reconciler(fake)
    add(ours, fake, session("s1"))
    await ours.admit(ours.sessions[f"{NS}/s1"])
    # the Pod exists before anything else is written; the status follows it
    assert fake.calls == [("ensure Secret", "s1-token"), ("ensure Pod", "s1-worker")]
    assert f"{NS}/s1" in ours.unreported_starts()
    await ours._flush_start(f"{NS}/s1")
    assert fake.calls[-1] == ("patch status", "Starting")
    status = fake.sessions["s1"]["status"]
    pod = fake.objects[("Pod", "s1-worker")]
    assert status["podName"] == "s1-worker"
    assert status["placement"] == json.loads(
        pod["metadata"]["annotations"][manifests.ANNOTATION_PLACEMENT]
    )


async def test_the_starting_status_waits_for_the_admissions_then_follows() -> None:
    fake = FakeApi()
    ours = await make_reconciler(fake)
    ours.start()
    try:
        for i in range(5):
            add(ours, fake, session(f"b{i}"))
            ours.request_admission(f"{NS}/b{i}")
        async with asyncio.timeout(5):
            while len(fake.writes("patch status")) < 5:
                await asyncio.sleep(0.01)
        pods = [i for i, call in enumerate(fake.calls) if call[0] == "ensure Pod"]
        statuses = [i for i, call in enumerate(fake.calls) if call[0] == "patch status"]
        assert len(pods) == 5
        assert max(pods) < min(statuses)  # every Pod first, then the statuses
        assert not ours.unreported_starts()
    finally:
        await ours.aclose()


async def test_a_worker_report_first_writes_the_pending_starting_status() -> None:
    fake = FakeApi()
    ours = await make_reconciler(fake)
    add(ours, fake, session("s1"))
    await ours.admit(ours.sessions[f"{NS}/s1"])
    updated = await ours.apply_worker_report(ours.sessions[f"{NS}/s1"], {"phase": "Joined"})
    assert fake.writes("patch status") == [("patch status", "Starting"), ("patch status", "Joined")]
    status = api.parse_status(updated["status"])
    assert status.phase is api.Phase.JOINED
    assert status.pod_name == "s1-worker" and status.placement is not None
    # a later reporter finds nothing left to write: the phase never goes back
    await ours._flush_start(f"{NS}/s1")
    assert len(fake.writes("patch status")) == 2


async def test_a_restart_that_finds_the_pod_writes_the_status_from_it() -> None:
    fake = FakeApi()
    first = await make_reconciler(fake)
    add(first, fake, session("s1"))
    await first.admit(first.sessions[f"{NS}/s1"])  # Secret and Pod; then the process dies
    pod = fake.objects[("Pod", "s1-worker")]
    fake.calls.clear()

    second = await make_reconciler(fake)  # the ledger from the Pod's annotation
    assert len(second.placement.ledger) == 1
    second.observe_session(None, fake.sessions["s1"])  # kopf's listing
    assert second.needs_admission(None, fake.sessions["s1"])
    await second.admit(second.sessions[f"{NS}/s1"])
    assert fake.calls == [("patch status", "Starting")]  # no second Secret, no second Pod
    status = fake.sessions["s1"]["status"]
    annotation = pod["metadata"]["annotations"][manifests.ANNOTATION_PLACEMENT]
    assert status["placement"] == json.loads(annotation)
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert status["participantId"] == env[reconciler.PARTICIPANT_ENV]
    assert len(second.placement.ledger) == 1


async def test_the_token_and_the_pod_name_the_same_participant() -> None:
    fake = FakeApi()
    ours = await make_reconciler(fake)
    add(ours, fake, session("s1", uid="3f1c0a2e-0000-4000-8000-000000000001"))
    await ours.admit(ours.sessions[f"{NS}/s1"])
    secret = fake.objects[("Secret", "s1-token")]
    token = base64.b64decode(secret["data"]["token"]).decode()
    claims = jwt.decode(token, options={"verify_signature": False})
    pod = fake.objects[("Pod", "s1-worker")]
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    participant = env[reconciler.PARTICIPANT_ENV]
    assert participant == reconciler.participant_id_for("3f1c0a2e-0000-4000-8000-000000000001")
    assert participant in json.dumps(claims)
    # stable: a second attempt (after a crash before the Pod) mints for the same participant
    assert reconciler.participant_id_for(
        "3f1c0a2e-0000-4000-8000-000000000001"
    ) == reconciler.participant_id_for("3f1c0a2e-0000-4000-8000-000000000001")


async def test_statuses_and_specs_are_parsed_once_per_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeApi()
    ours = await make_reconciler(fake)
    counts = {"status": 0, "spec": 0}
    parse_status, parse_spec = api.parse_status, api.parse_spec

    def counting_status(raw: Any) -> api.AvatarSessionStatus:
        counts["status"] += 1
        return parse_status(raw)

    def counting_spec(raw: Any) -> api.AvatarSessionSpec:
        counts["spec"] += 1
        return parse_spec(raw)

    monkeypatch.setattr(api, "parse_status", counting_status)
    monkeypatch.setattr(api, "parse_spec", counting_spec)
    body = session("s1")
    add(ours, fake, body)
    for _ in range(10):
        await ours.sweep()
    assert counts == {"status": 1, "spec": 1}
    newer = {**body, "metadata": {**body["metadata"], "resourceVersion": "2"}}
    ours.observe_session("MODIFIED", newer)
    await ours.sweep()
    assert counts == {"status": 2, "spec": 1}  # same generation: the spec is not read again


async def test_an_invalid_spec_is_refused_the_same_way_every_time() -> None:
    fake = FakeApi()
    ours = await make_reconciler(fake)
    body = session("bad")
    body["spec"]["resources"] = {"vramMiB": -1}
    add(ours, fake, body)
    for _ in range(2):
        with pytest.raises(api.SpecError) as caught:
            ours.spec_of(body)
        assert "vramMiB" in str(caught.value)


async def test_a_pod_missing_from_the_list_counts_as_deleted_but_not_a_new_one() -> None:
    fake = FakeApi()
    ours = await make_reconciler(fake)
    for name in ("gone", "kept"):
        add(ours, fake, session(name))
        await ours.admit(ours.sessions[f"{NS}/{name}"])
        await ours._flush_start(f"{NS}/{name}")
    del fake.objects[("Pod", "gone-worker")]  # deleted while Pending: no watch event
    listing = fake.list_pods

    async def list_while_a_pod_is_created(selector: str, namespace: str | None = None) -> Any:
        pods = await listing(selector, namespace)
        add(ours, fake, session("new"))  # its Pod is made after the list was answered
        await ours.admit(ours.sessions[f"{NS}/new"])
        return pods

    fake.list_pods = list_while_a_pod_is_created  # type: ignore[method-assign]
    await ours.resync_pods()
    assert "uid-gone" not in ours.pods
    assert {"uid-kept", "uid-new"} <= set(ours.pods)


async def test_a_flood_of_worker_reports_is_coalesced_and_ended_is_never_delayed() -> None:
    """200 reports at once make a handful of writes, the last state of every field is the one
    written, and an Ended report is written at once with what was pending."""
    fake = FakeApi()
    ours = await make_reconciler(fake)
    try:
        add(ours, fake, session("s1"))
        key = f"{NS}/s1"
        await ours.admit(ours.sessions[key])
        await ours.apply_worker_report(ours.sessions[key], {"phase": "Joined"})
        before = len(fake.writes("patch status"))
        for segment in range(200):
            report = {"playback": {"state": "Speaking", "segments": segment}, "fps": 30.0}
            await ours.apply_worker_report(ours.sessions[key], report)
        burst = len(fake.writes("patch status")) - before
        assert burst <= 2, burst
        async with asyncio.timeout(5):
            while fake.sessions["s1"]["status"].get("playback", {}).get("segments") != 199:
                await asyncio.sleep(0.05)
        assert len(fake.writes("patch status")) - before <= 3
        await ours.apply_worker_report(ours.sessions[key], {"playback": {"segments": 200}})
        ended = await ours.apply_worker_report(
            ours.sessions[key], {"phase": "Ended", "endReason": "RoomEnded"}
        )
        assert ended["status"]["phase"] == "Ended"
        assert ended["status"]["playback"]["segments"] == 200  # the pending one went with it
    finally:
        await ours.aclose()


class Broken(RuntimeError):
    """A failure injected into one step of admission."""


@pytest.mark.parametrize("step", ["read secret", "ensure Secret", "ensure Pod", "patch Starting"])
async def test_no_session_stays_without_a_phase(step: str) -> None:
    """Whatever step of admission fails — reading the credentials, creating the Secret or the
    Pod, writing the Starting status — the watchdog ends the session at its join timeout, in a
    phase, with a reason that says what failed, and an Event."""
    fake = FakeApi()
    now = [1_000.0]
    ours = await make_reconciler(fake, clock=lambda: now[0])
    read_secret, ensure, patch = fake.read_secret, fake.ensure, fake.patch_session_status

    async def broken_read(namespace: str, name: str) -> dict[str, Any]:
        if step == "read secret":
            raise Broken("injected: the credentials could not be read")
        return await read_secret(namespace, name)

    async def broken_ensure(obj: dict[str, Any]) -> bool:
        if step == f"ensure {obj['kind']}":
            raise Broken(f"injected: the {obj['kind']} could not be created")
        return await ensure(obj)

    async def broken_patch(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        if step == "patch Starting" and status.get("phase") == "Starting":
            raise kube.KubeError(500, "InternalError", "injected: etcd timed out")
        return await patch(namespace, name, status)

    fake.read_secret = broken_read  # type: ignore[method-assign]
    fake.ensure = broken_ensure  # type: ignore[method-assign]
    fake.patch_session_status = broken_patch  # type: ignore[method-assign]
    ours.events.start()
    ours.admissions.start()  # the retries the sweep queues are served (and fail again)
    try:
        add(ours, fake, session("s1"))
        key = f"{NS}/s1"
        with contextlib.suppress(Exception):
            await ours._admit_key(key)
            await ours._flush_start(key)
        assert "phase" not in (fake.sessions["s1"].get("status") or {})
        now[0] += 30
        await ours.sweep()  # retried, still failing, still within its join timeout
        now[0] += 31
        await ours.sweep()
        status = fake.sessions["s1"]["status"]
        assert (status["phase"], status["endReason"]) == ("Failed", "JoinTimeout"), status
        assert "injected" in status["message"] or step == "patch Starting", status["message"]
        async with asyncio.timeout(5):
            while ("create Event", "") not in [(c, "") for c, _ in fake.writes("create Event")]:
                await asyncio.sleep(0.01)
        assert ours.placement.placement_of(key) is None  # its GPU is free again
    finally:
        await ours.aclose()


async def joined_with_a_pod(ours: reconciler.Reconciler, fake: FakeApi, name: str) -> Any:
    add(ours, fake, session(name))
    await ours.admit(ours.sessions[f"{NS}/{name}"])
    await ours._flush_start(f"{NS}/{name}")
    ours.observe_session("MODIFIED", await fake.patch_session_status(NS, name, {"phase": "Joined"}))
    pod = copy.deepcopy(fake.objects[("Pod", f"{name}-worker")])
    pod["status"] = {"phase": "Running"}
    ours.observe_pod("MODIFIED", pod)
    return pod


@pytest.mark.parametrize("order", ["failed-then-deleted", "deleted-then-failed"])
async def test_one_lost_pod_is_one_restart_however_many_events_report_it(order: str) -> None:
    """A worker Pod deleted by someone else: its Failed-while-deleting event, its DELETED and
    a direct check (the Pod list's) all report it, their checks run at once. One new Pod;
    the healthy replacement is neither deleted nor replaced (seen on the real control plane:
    three restarts and a deleted replacement for one `kubectl delete pod`)."""
    fake = FakeApi()
    ours = await make_reconciler(fake)
    pod = await joined_with_a_pod(ours, fake, "x")
    fake.calls.clear()
    fake.delay = 0.01
    failed = copy.deepcopy(pod)
    failed["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    failed["status"] = {"phase": "Failed"}
    events = [("MODIFIED", failed), ("DELETED", failed)]
    for event_type, body in events if order == "failed-then-deleted" else events[::-1]:
        ours.observe_pod(event_type, body)
    check = ours.pods_watch.check(ours.sessions[f"{NS}/x"])
    await asyncio.gather(check, *[t for t in asyncio.all_tasks() if "check pod" in t.get_name()])
    # and a late check of the same loss, once the replacement runs
    replacement = copy.deepcopy(fake.objects[("Pod", "x-worker-1")])
    replacement["status"] = {"phase": "Running"}
    ours.observe_pod("MODIFIED", replacement)
    ours.observe_pod("DELETED", failed)
    await asyncio.gather(*[t for t in asyncio.all_tasks() if "check pod" in t.get_name()])
    created = [name for kind, name in fake.calls if kind == "ensure Pod"]
    assert created == ["x-worker-1"], fake.calls
    assert ("delete Pod", "x-worker-1") not in fake.calls
    status = fake.sessions["x"]["status"]
    assert status["podName"] == "x-worker-1" and status["phase"] == "Joined"
    joined = next(c for c in status["conditions"] if c["type"] == "Joined")
    assert (joined["status"], joined["reason"]) == ("False", "Restarting")


def test_the_restart_count_in_a_pod_name() -> None:
    for restart in (0, 1, 12):
        assert (
            manifests.restart_in_name("s-worker-7", manifests.pod_name("s-worker-7", restart))
            == restart
        )
    assert manifests.restart_in_name("s", "other-worker-3") == 0
