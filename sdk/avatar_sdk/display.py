"""What avatarctl prints: kubectl-style tables and ages, `describe`, JSON/YAML dumps, and the
progress lines of a wait. Pure functions of the objects and the time; no I/O but the writer a
caller passes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final, TextIO

import yaml

from avatar_sdk import api, timestamps
from avatar_sdk import client as avatar_client
from avatar_sdk.objects import Obj

NONE: Final = "<none>"


def human_age(seconds: float) -> str:
    """kubectl's ages: 45s, 3m12s, 25m, 5h30m, 30h, 3d4h, 45d, 2y."""
    s = max(int(seconds), 0)
    m, h, d = s // 60, s // 3600, s // 86_400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if h < 24 * 365 * 2:
        return f"{d}d"
    return f"{d // 365}y"


def _age(value: object, now: datetime) -> str:
    moment = timestamps.parse(value)
    return human_age((now - moment).total_seconds()) if moment else NONE


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns three spaces apart, as kubectl prints them."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


SESSION_COLUMNS: Final = ("NAME", "ROOM", "PHASE", "PLAYBACK", "NODE", "GPU", "VRAM", "AGE")


def session_row(obj: Obj, now: datetime, *, namespace: bool = False) -> list[str]:
    session = avatar_client.parse_session(obj)
    status = session.status
    placement = status.placement
    vram = f"{placement.vram_mib}Mi" if placement is not None else NONE  # reserved, as kubectl
    row = [
        session.name,
        session.spec.room_id or NONE,
        status.phase.value if status.phase else NONE,
        status.playback.state.value if status.playback else NONE,
        placement.node if placement else NONE,
        str(placement.gpu) if placement and placement.gpu is not None else NONE,
        vram,
        _age(session.metadata.get("creationTimestamp"), now),
    ]
    return [session.namespace, *row] if namespace else row


def sessions_table(objs: Iterable[Obj], now: datetime, *, namespace: bool = False) -> str:
    header = ["NAMESPACE", *SESSION_COLUMNS] if namespace else list(SESSION_COLUMNS)
    return table([header, *(session_row(o, now, namespace=namespace) for o in objs)])


def describe(obj: Obj, events: list[Obj] | str, now: datetime) -> str:
    """kubectl-describe-like text for one session; `events` is a list or why there is none."""
    session = avatar_client.parse_session(obj)
    spec, status, meta = session.spec, session.status, session.metadata
    lines: list[tuple[str, str]] = [
        ("Name", session.name),
        ("Namespace", session.namespace),
        ("Room", spec.room_id),
        ("Participant", status.participant_id or spec.participant_id or NONE),
        ("Agent Participant", spec.agent_participant_id or NONE),
        (
            "Created",
            f"{meta.get('creationTimestamp', NONE)} "
            f"({_age(meta.get('creationTimestamp'), now)} ago)",
        ),
        ("Phase", status.phase.value if status.phase else NONE),
        ("Message", status.message or NONE),
        ("End Reason", status.end_reason.value if status.end_reason else NONE),
        (
            "Avatar",
            f"{spec.avatar.renderer.value}, {spec.video.width}x{spec.video.height} "
            f"@ {spec.video.fps} fps, audio {spec.audio.sample_rate} Hz "
            f"{'mono' if spec.audio.channels == 1 else 'stereo'}",
        ),
        (
            "Resources",
            f"{spec.resources.effective_vram_mib} MiB VRAM, GPU {spec.resources.gpu.value}",
        ),
    ]
    placement = status.placement
    if placement is not None:
        gpu = f"GPU {placement.gpu}" if placement.gpu is not None else "no GPU"
        product = f", {placement.product}" if placement.product else ""
        exclusive = ", exclusive" if placement.exclusive else ""
        where = f"{placement.node} {gpu} ({placement.vram_mib} MiB{product}{exclusive})"
        lines.append(("Placement", where))
    else:
        lines.append(("Placement", NONE))
    lines.append(("Pod", status.pod_name or NONE))
    for label, value in (
        ("Scheduled At", status.scheduled_at),
        ("Joined At", status.joined_at),
        ("Ended At", status.ended_at),
    ):
        if value is not None:
            lines.append((label, timestamps.format(value)))
    if status.playback is not None:
        p = status.playback
        lines.append(
            (
                "Playback",
                f"{p.state.value}, {p.segments} segments, {p.interrupts} interrupted, "
                f"position {p.position:.2f}s",
            )
        )
    measured = []
    if status.vram_used_mib is not None:
        measured.append(f"vram {status.vram_used_mib} MiB")
    if status.fps is not None:
        measured.append(f"fps {status.fps:.1f}")
    if status.sync_error_ms is not None:
        measured.append(f"sync {status.sync_error_ms:.1f} ms")
    if measured:
        lines.append(("Measured", ", ".join(measured)))
    return (
        "\n".join(
            [
                *fields(lines),
                *section("Conditions:", condition_rows(status.conditions, now)),
                *section("Events:", event_rows(events, now)),
            ]
        )
        + "\n"
    )


def fields(lines: list[tuple[str, str]]) -> list[str]:
    """`Label:  value` lines, the values aligned, as kubectl describe prints them."""
    width = max(len(label) for label, _ in lines) + 2
    return [f"{(label + ':').ljust(width)}{value}" for label, value in lines]


def section(title: str, rows: list[list[str]] | str) -> list[str]:
    """A describe section: `title`, then `rows` (a header and rows) as an indented table,
    <none> when there is only the header, or `rows` itself when it is why there is nothing."""
    if isinstance(rows, str):
        return [title, f"  {rows}"]
    if len(rows) <= 1:
        return [title, f"  {NONE}"]
    return [title, *("  " + line for line in table(rows).splitlines())]


def condition_rows(conditions: Sequence[Any], now: datetime) -> list[list[str]]:
    """Conditions (a session's or a pool's) as rows under their header."""
    rows = [["Type", "Status", "Reason", "Age", "Message"]]
    rows += [
        [c.type.value, c.status.value, c.reason, _age(c.last_transition_time, now), c.message or ""]
        for c in conditions
    ]
    return rows


def event_rows(events: list[Obj] | str, now: datetime) -> list[list[str]] | str:
    """core/v1 Events as rows under their header (`events` itself when it says why none)."""
    if isinstance(events, str):
        return events
    rows = [["Type", "Reason", "Age", "From", "Message"]]
    for e in events:
        count = int(e.get("count") or 1)
        age = _age(e.get("lastTimestamp") or e.get("eventTime"), now)
        source = (e.get("source") or {}).get("component") or e.get("reportingComponent") or ""
        rows.append(
            [
                str(e.get("type", "")),
                str(e.get("reason", "")),
                f"{age} (x{count})" if count > 1 else age,
                str(source),
                str(e.get("message", "")),
            ]
        )
    return rows


def dump(obj: Any, output: str) -> str:
    if output == "json":
        return json.dumps(obj, indent=2) + "\n"
    return str(yaml.safe_dump(obj, sort_keys=False))


def as_list(items: list[Obj]) -> Obj:
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {}}


class Progress:
    """One stderr line each time a session's phase or message changes while waiting."""

    def __init__(self, err: TextIO, name: str) -> None:
        self._err = err
        self._name = name
        self._last: tuple[str, str] | None = None
        self._start = time.monotonic()

    def __call__(self, session: api.AvatarSession) -> None:
        status = session.status
        phase = status.phase.value if status.phase else "Created"
        detail = status.message or ""
        if phase == api.Phase.SCHEDULED.value and status.placement is not None:
            p = status.placement
            detail = detail or f"on {p.node}" + (f" GPU {p.gpu}" if p.gpu is not None else "")
        if phase == api.Phase.STARTING.value and not detail and status.pod_name:
            detail = f"pod {status.pod_name}"
        if (phase, detail) == self._last:
            return
        self._last = (phase, detail)
        elapsed = time.monotonic() - self._start
        line = f"{self._name}: {phase}" + (f" - {detail}" if detail else "")
        self._err.write(f"[{elapsed:5.1f}s] {line}\n")
        self._err.flush()
