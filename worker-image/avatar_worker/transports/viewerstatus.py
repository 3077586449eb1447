"""What the viewer page shows beside the video: the session's state, as far as it is known.

A local room knows what passes through it, and `RoomStatus` keeps that: the avatar participant
(whoever publishes video), its frames per second, the agent's audio starting a turn (Speaking),
the avatar's `stream_ended` acks ending it (Idle, with the segment, interrupt and position
counts the acks carry), and the avatar leaving or the meeting ending (Ended). Between acks the
position is the time since the turn's first audio, which is how the avatar plays it.

Where a session exists (the demo: the AvatarSession the operator and the worker write),
`report()` lays its status over that picture — phase, playback, node and GPU, fps, sync error,
VRAM — and the snapshot says which source it shows. `snapshot()` is a JSON-ready dict; `version`
changes whenever it would differ, so a pusher sends only changes.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import av
import numpy as np

from avatar_sdk import protocol
from avatar_worker import tracks
from avatar_worker.transports import localroom

ACKS_KEPT = 8
IDLE = "Idle"
SPEAKING = "Speaking"


class RoomStatus:
    """The state of one room's session, seen from the room (and reported, where known)."""

    def __init__(self, room_id: str, agent_id: str) -> None:
        self.room_id = room_id
        self.agent_id = agent_id
        self.avatar: str | None = None
        self.sample_rate = 24_000
        self.channels = 1
        self.version = 0
        self._phase: str | None = None
        self._state = IDLE
        self._segments = 0
        self._interrupts = 0
        self._position = 0.0
        self._turn_started: float | None = None
        self._fps = tracks.FpsMeter(window=2.0)
        self._acks: deque[dict[str, Any]] = deque(maxlen=ACKS_KEPT)
        self._reported: dict[str, Any] = {}
        self._interrupted_at: float | None = None  # a barge in waiting for the avatar's silence
        self._silent_after_ms: float | None = None

    # --- what the room sees -------------------------------------------------------------

    def on_frame(self, received: localroom.ReceivedFrame) -> None:
        if self.avatar is None and received.kind == "video":
            self.avatar = received.sender
            self._phase = "Joined"
            self.version += 1
        if received.sender != self.avatar:
            return
        if received.kind == "video":
            self._fps.tick()
        elif isinstance(frame := received.frame, av.AudioFrame):
            self.sample_rate = int(frame.sample_rate)
            self.channels = len(frame.layout.channels)
            if self._interrupted_at is not None and not np.any(frame.to_ndarray()):
                self._silent_after_ms = (time.monotonic() - self._interrupted_at) * 1000
                self._interrupted_at = None
                self.version += 1

    def interrupted(self) -> None:
        """The page barged in: time the avatar's first silent audio frame in the room."""
        self._interrupted_at = time.monotonic()
        self._silent_after_ms = None

    def on_data(self, message: dict[str, Any]) -> None:
        decoded = protocol.decode_data(message)
        kind = decoded.message
        if isinstance(kind, protocol.AudioChunk) and decoded.sender != self.avatar:
            if self._state != SPEAKING:
                self._state = SPEAKING
                self._turn_started = time.monotonic()
                self.version += 1
        elif isinstance(kind, protocol.StreamEnded):
            self._segments += 1
            self._interrupts += int(kind.interrupted)
            self._position = kind.playback_position
            self._state = IDLE
            self._turn_started = None
            self._acks.append(
                {
                    "at": time.time(),
                    "playbackPosition": round(kind.playback_position, 3),
                    "interrupted": kind.interrupted,
                }
            )
            self.version += 1

    def on_event(self, event: localroom.RoomEvent) -> None:
        if event.kind == localroom.MEETING_ENDED or (
            event.kind == localroom.PARTICIPANT_LEFT and event.participant_id == self.avatar
        ):
            self._phase = "Ended"
            self.avatar = None
            self._state = IDLE
            self.version += 1

    # --- what a session reports ---------------------------------------------------------

    def report(self, status: dict[str, Any]) -> None:
        """Lay a session's status (AvatarSession `status`, JSON names) over the room's view."""
        if status != self._reported:
            self._reported = dict(status)
            self.version += 1

    # ------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        position = self._position
        if self._turn_started is not None:
            position = time.monotonic() - self._turn_started
        fps = self._fps.fps()
        out: dict[str, Any] = {
            "roomId": self.room_id,
            "source": "room",
            "avatar": self.avatar,
            "agent": self.agent_id,
            "phase": self._phase,
            "playback": {
                "state": self._state,
                "segments": self._segments,
                "interrupts": self._interrupts,
                "position": round(position, 2),
            },
            "node": None,
            "gpu": None,
            "fps": round(fps, 1) if fps else None,
            "syncErrorMs": None,
            "vramUsedMiB": None,
            "acks": list(self._acks),
            "bargeInToSilenceInRoomMs": (
                None if self._silent_after_ms is None else round(self._silent_after_ms, 1)
            ),
        }
        reported = self._reported
        if reported:
            out["source"] = "session"
            out["phase"] = reported.get("phase") or out["phase"]
            playback = reported.get("playback") or {}
            for key in ("state", "segments", "interrupts", "position"):
                if playback.get(key) is not None:
                    out["playback"][key] = playback[key]
            placement = reported.get("placement") or {}
            out["node"] = placement.get("node")
            out["gpu"] = placement.get("gpu")
            for key in ("fps", "syncErrorMs", "vramUsedMiB"):
                if reported.get(key) is not None:
                    out[key] = reported[key]
        return out
