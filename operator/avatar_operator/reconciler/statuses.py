"""Pure builders of the status patches the operator writes: phase, message and conditions.

Each takes what the session's status says now and returns the JSON merge patch for the next
state, so every transition can be read (and tested) without an API: invalid → Failed, no GPU →
Pending, no credentials → Scheduled, started → Starting, a worker's report → Joined/playback,
ended → Ended or Failed. Conditions keep their `lastTransitionTime` unless their status changes
(`api.set_condition`), and each carries the generation it was decided for.
"""

from __future__ import annotations

from typing import Any

from avatar_sdk import api, timestamps
from avatar_sdk.objects import Obj

FAILED_REASONS = frozenset(
    {
        api.EndReason.JOIN_TIMEOUT,
        api.EndReason.POD_FAILED,
        api.EndReason.NODE_LOST,
        api.EndReason.INVALID_SPEC,
        api.EndReason.ERROR,
    }
)
Conditions = list[api.Condition]


def describe(placement: api.Placement | None) -> str:
    """Where a session runs, in words (status messages and Events)."""
    if placement is None:
        return "a node the scheduler picks (no GPU)"
    if placement.gpu is None:
        return f"node {placement.node} (no GPU)"
    return f"node {placement.node} GPU {placement.gpu} ({placement.vram_mib} MiB)"


def _wire(conditions: Conditions) -> list[Obj]:
    return [c.to_wire() for c in conditions]


def invalid_spec(status: api.AvatarSessionStatus, generation: Any, message: str) -> Obj:
    """Phase Failed, reason InvalidSpec: the message names the field."""
    conditions = api.set_condition(
        status.conditions,
        api.ConditionType.ENDED,
        True,
        "InvalidSpec",
        message,
        generation=generation,
    )
    return {
        "phase": api.Phase.FAILED.value,
        "endReason": api.EndReason.INVALID_SPEC.value,
        "message": message,
        "endedAt": timestamps.now_rfc3339(),
        "observedGeneration": generation,
        "conditions": _wire(conditions),
    }


def pending(status: api.AvatarSessionStatus, generation: Any, message: str) -> Obj:
    """Phase Pending, reason Unschedulable: no GPU fits now."""
    conditions = api.set_condition(
        status.conditions,
        api.ConditionType.SCHEDULED,
        False,
        "Unschedulable",
        message,
        generation=generation,
    )
    return {
        "phase": api.Phase.PENDING.value,
        "message": message,
        "observedGeneration": generation,
        "conditions": _wire(conditions),
    }


def placed(
    status: api.AvatarSessionStatus, placement: api.Placement | None, generation: Any
) -> Conditions:
    """The conditions once a GPU (or none, for `gpu: none`) is reserved."""
    return api.set_condition(
        status.conditions,
        api.ConditionType.SCHEDULED,
        True,
        "Placed",
        describe(placement),
        generation=generation,
    )


def waiting_for_credentials(
    conditions: Conditions,
    placement: api.Placement | None,
    generation: Any,
    *,
    reason: str,
    message: str,
) -> Obj:
    """Phase Scheduled: the GPU is held while the credentials are missing or refused."""
    conditions = api.set_condition(
        conditions, api.ConditionType.TOKEN_ISSUED, False, reason, message, generation=generation
    )
    return {
        "phase": api.Phase.SCHEDULED.value,
        "placement": placement.to_wire() if placement else None,
        "message": message,
        "observedGeneration": generation,
        "conditions": _wire(conditions),
    }


def starting(
    conditions: Conditions,
    status: api.AvatarSessionStatus,
    generation: Any,
    *,
    placement: api.Placement | None,
    pod_name: str,
    secret_name: str,
    source: api.TokenSource,
    participant_id: str,
    token_expires_at: int | None,
) -> Obj:
    """Phase Starting: the Secret and the Pod exist; where, and with which token."""
    if source is api.TokenSource.CALLER:
        token_reason, token_message = "CallerToken", "signed by the session's creator"
    else:
        token_reason, token_message = "Minted", "minted from the VideoSDK key"
    if token_expires_at is not None:
        token_message += f", expires {timestamps.format(token_expires_at)}"
    conditions = api.set_condition(
        conditions,
        api.ConditionType.TOKEN_ISSUED,
        True,
        token_reason,
        token_message,
        generation=generation,
    )
    conditions = api.set_condition(
        conditions, api.ConditionType.POD_READY, False, "Creating", "", generation=generation
    )
    conditions = api.set_condition(
        conditions, api.ConditionType.JOINED, False, "Starting", "", generation=generation
    )
    return {
        "phase": api.Phase.STARTING.value,
        "placement": placement.to_wire() if placement else None,
        "podName": pod_name,
        "secretName": secret_name,
        "tokenSource": source.value,
        "participantId": participant_id,
        "scheduledAt": timestamps.format(status.scheduled_at)
        if status.scheduled_at
        else timestamps.now_rfc3339(),
        "message": f"starting the worker on {describe(placement)}",
        "observedGeneration": generation,
        "conditions": _wire(conditions),
    }


def restarting(status: api.AvatarSessionStatus, generation: Any, *, why: str, pod_name: str) -> Obj:
    """A new worker Pod replaces one that failed or went: the phase stays (a Joined session's
    lifetime limits still count from its first join), and the conditions say the avatar is
    out of the room until the new worker reports Joined."""
    conditions = api.set_condition(
        status.conditions,
        api.ConditionType.POD_READY,
        False,
        "Restarting",
        why,
        generation=generation,
    )
    conditions = api.set_condition(
        conditions,
        api.ConditionType.JOINED,
        False,
        "Restarting",
        f"a new worker ({pod_name}) is starting: {why}",
        generation=generation,
    )
    return {
        "podName": pod_name,
        "message": f"{why}; restarting the worker",
        "conditions": _wire(conditions),
    }


def rejoins(status: api.AvatarSessionStatus, report: Obj) -> bool:
    """Whether `report` is a restarted worker's Joined in a session that had joined before."""
    joined = status.condition(api.ConditionType.JOINED)
    return (
        report.get("phase") == api.Phase.JOINED.value
        and status.phase is api.Phase.JOINED
        and (joined is None or joined.status is not api.ConditionStatus.TRUE)
    )


def worker_report(status: api.AvatarSessionStatus, report: Obj, generation: Any) -> Obj:
    """A worker's report (already checked by `avatar_sdk.reports`) as the status patch: the
    reported fields, and the conditions and phase they imply. The end of a session is added by
    the caller (`ended`), which also counts it."""
    # The operator's own clock says when a session joined and ended: every lifetime limit
    # counts from these, never from a time a worker supplies.
    patch: Obj = {k: v for k, v in report.items() if k not in ("phase", "joinedAt", "endedAt")}
    conditions = status.conditions
    rejoined = rejoins(status, report)
    if report.get("phase") == api.Phase.JOINED.value and (
        status.phase is not api.Phase.JOINED or rejoined
    ):
        conditions = api.set_condition(
            conditions, api.ConditionType.POD_READY, True, "Running", "", generation=generation
        )
        conditions = api.set_condition(
            conditions,
            api.ConditionType.JOINED,
            True,
            "InRoom",
            "the worker joined the room and is publishing audio and video",
            generation=generation,
        )
        if rejoined:  # joinedAt stays the first join's
            patch["message"] = "in the room again, with a new worker"
        else:
            patch["phase"] = api.Phase.JOINED.value
            patch["joinedAt"] = timestamps.now_rfc3339()
            patch["message"] = "in the room"
    playback = report.get("playback")
    if isinstance(playback, dict) and "state" in playback:
        speaking = playback["state"] == api.PlaybackState.SPEAKING.value
        conditions = api.set_condition(
            conditions,
            api.ConditionType.SPEAKING,
            speaking,
            "Speaking" if speaking else "Idle",
            "",
            generation=generation,
        )
    if conditions is not status.conditions:
        patch["conditions"] = _wire(conditions)
    return patch


def ended(
    status: api.AvatarSessionStatus, reason: api.EndReason, message: str, generation: Any
) -> Obj:
    """Phase Ended (or Failed, for the reasons in FAILED_REASONS), its reason and time."""
    conditions = api.set_condition(
        status.conditions,
        api.ConditionType.ENDED,
        True,
        reason.value,
        message,
        generation=generation,
    )
    conditions = api.set_condition(
        conditions, api.ConditionType.SPEAKING, False, "Ended", "", generation=generation
    )
    playback = (status.playback or api.Playback()).model_copy(
        update={"state": api.PlaybackState.IDLE}
    )
    return {
        "phase": (api.Phase.FAILED if reason in FAILED_REASONS else api.Phase.ENDED).value,
        "endReason": reason.value,
        "endedAt": timestamps.now_rfc3339(),
        "message": message or f"ended: {reason.value}",
        "playback": playback.to_wire(),
        "conditions": _wire(conditions),
    }
