"""The local room: a VideoSDK-like room in one process, for tests, benchmarks and the demo.

`LocalRoom` lives in one process. Participants send data messages to each other with the
semantics of VideoSDK's data channel — and its traps — under configurable `LinkConditions`:

* RELIABLE messages arrive in order (they may still be lost with `reliable_loss`: VideoSDK's
  reliable producer gives up after 5 retransmits);
* UNRELIABLE messages may be lost (`loss`) and reordered (`jitter` delays each one by a random
  extra amount, so later ones overtake earlier ones);
* binary payloads that happen to be valid UTF-8 arrive as `str`, as the VideoSDK client hands
  them over.

A published track is pulled with `recv()` in a loop, exactly as a WebRTC sender pulls it (the
track paces itself), and each frame reaches every other participant after `latency`, stamped
with when it was sent and when it arrived. `LocalTransport` is the worker's `Transport` for a
room of its own process. Elsewhere: a user's browser (`viewer`, and a real one: `webviewer`),
and the same room for several processes, served over a websocket (`roomserver`, `roomclient`,
`roomwire`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import av

from avatar_sdk import api, protocol
from avatar_worker import clock as clocks
from avatar_worker.transports.base import (
    AgentIdFn,
    DataListener,
    JoinError,
    MediaTrack,
    Transport,
    TransportError,
)

logger = logging.getLogger(__name__)

PARTICIPANT_JOINED = "participant-joined"
PARTICIPANT_LEFT = "participant-left"
MEETING_ENDED = "meeting-ended"


@dataclass(frozen=True)
class LinkConditions:
    """How the room's network behaves (one way, every receiver alike)."""

    latency: float = 0.0  # s, every message and frame
    jitter: float = 0.0  # s, extra uniform delay on UNRELIABLE messages (reorders them)
    loss: float = 0.0  # probability an UNRELIABLE message is lost
    reliable_loss: float = 0.0  # probability a RELIABLE message is lost despite retransmits
    seed: int | None = None


class RoomEvent(NamedTuple):
    kind: str  # participant-joined | participant-left | meeting-ended
    participant_id: str | None = None


class ReceivedFrame(NamedTuple):
    sender: str
    kind: str  # audio | video
    frame: av.AudioFrame | av.VideoFrame
    sent_at: float  # room clock, when recv() returned it
    arrived_at: float  # room clock, when it reached this participant


FrameListener = Callable[[ReceivedFrame], None]
EventListener = Callable[[RoomEvent], None]


def videosdk_payload(payload: str | bytes) -> str | bytes:
    """What the VideoSDK client hands a listener: valid UTF-8 binary becomes `str`."""
    if isinstance(payload, bytes):
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return payload
    return payload


class LocalRoom:
    """An in-process room; see the module docstring."""

    def __init__(
        self,
        room_id: str = "local-room",
        conditions: LinkConditions | None = None,
        *,
        clock: clocks.Clock | None = None,
    ) -> None:
        self.room_id = room_id
        self.conditions = conditions or LinkConditions()
        self._clock = clock if clock is not None else clocks.LoopClock()
        self._random = random.Random(self.conditions.seed)
        self._participants: dict[str, LocalParticipant] = {}
        self._last_ordered: dict[tuple[str, str], float] = {}
        self.ended = False
        self.stats: dict[str, int] = {"sent": 0, "lost": 0, "delivered": 0}

    @property
    def participants(self) -> list[str]:
        return list(self._participants)

    def participant(self, participant_id: str) -> LocalParticipant | None:
        """The participant `participant_id`, if in the room now."""
        return self._participants.get(participant_id)

    def join(self, participant_id: str) -> LocalParticipant:
        if self.ended:
            raise JoinError(f"room {self.room_id} has ended")
        if participant_id in self._participants:
            raise JoinError(f"participant {participant_id} is already in room {self.room_id}")
        participant = LocalParticipant(self, participant_id)
        self._participants[participant_id] = participant
        self._broadcast(RoomEvent(PARTICIPANT_JOINED, participant_id), exclude=participant_id)
        return participant

    async def end(self) -> None:
        """The meeting closes for everyone."""
        if self.ended:
            return
        self.ended = True
        for participant in list(self._participants.values()):
            participant._emit_event(RoomEvent(MEETING_ENDED))
            await participant._stop_publishing()
        self._participants.clear()

    # -----------------------------------------------------------------------------------------

    def _leave(self, participant: LocalParticipant) -> None:
        if self._participants.get(participant.id) is participant:
            del self._participants[participant.id]
            self._broadcast(RoomEvent(PARTICIPANT_LEFT, participant.id), exclude=participant.id)

    def _broadcast(self, event: RoomEvent, *, exclude: str | None = None) -> None:
        for pid, participant in list(self._participants.items()):
            if pid != exclude:
                participant._emit_event(event)

    def _send(self, sender: LocalParticipant, payload: str | bytes, reliability: str) -> None:
        if self.ended:
            raise ConnectionError("the room has ended")
        if isinstance(payload, str):
            size = len(payload.encode("utf-8", "surrogatepass"))
        else:
            size = len(payload)
        if size > protocol.MAX_MESSAGE_BYTES:
            raise ValueError(f"payload of {size} bytes exceeds {protocol.MAX_MESSAGE_BYTES}")
        loop = asyncio.get_running_loop()
        cond = self.conditions
        now = self._clock.now()
        reliable = reliability == protocol.RELIABLE
        self.stats["sent"] += 1
        for pid, receiver in list(self._participants.items()):
            if pid == sender.id:
                continue
            lost = cond.reliable_loss if reliable else cond.loss
            if lost and self._random.random() < lost:
                self.stats["lost"] += 1
                continue
            delay = cond.latency
            if reliable or not cond.jitter:
                # In order on its link: reliable messages always, everything without jitter
                # (timers due at the same instant would otherwise fire in any order).
                key = (sender.id, pid)
                when = max(now + delay, self._last_ordered.get(key, 0.0) + 1e-6)
                self._last_ordered[key] = when
                delay = when - now
            else:
                delay += self._random.uniform(0.0, cond.jitter)
            message = {
                "payload": videosdk_payload(payload),
                "from": sender.id,
                "timestamp": int(now * 1000),
                "reliability": reliability,
            }
            loop.call_later(max(0.0, delay), receiver._deliver_data, message)

    def _fan_out(self, sender: LocalParticipant, kind: str, frame: Any) -> None:
        loop = asyncio.get_running_loop()
        sent_at = self._clock.now()
        for pid, receiver in list(self._participants.items()):
            if pid != sender.id and receiver._frame_listeners:
                loop.call_later(
                    max(0.0, self.conditions.latency),
                    receiver._deliver_frame,
                    sender.id,
                    kind,
                    frame,
                    sent_at,
                )


class LocalParticipant:
    """One participant of a `LocalRoom`."""

    def __init__(self, room: LocalRoom, participant_id: str) -> None:
        self.room = room
        self.id = participant_id
        self._data_listeners: list[DataListener] = []
        self._event_listeners: list[EventListener] = []
        self._frame_listeners: list[FrameListener] = []
        self._publish_tasks: set[asyncio.Task[None]] = set()
        self._tracks: list[MediaTrack] = []
        self.left = False

    def add_data_listener(self, listener: DataListener) -> None:
        self._data_listeners.append(listener)

    def add_event_listener(self, listener: EventListener) -> None:
        self._event_listeners.append(listener)

    def add_frame_listener(self, listener: FrameListener) -> None:
        """Subscribe to every other participant's tracks."""
        self._frame_listeners.append(listener)

    async def send(self, payload: str | bytes, reliability: str = protocol.RELIABLE) -> None:
        if self.left:
            raise ConnectionError("not in the room")
        self.room._send(self, payload, reliability)

    def publish(self, track: MediaTrack) -> None:
        """Pull `track` with `recv()` until it ends, fanning its frames out to the room."""
        self._tracks.append(track)
        task = asyncio.create_task(self._publish(track), name=f"publish-{self.id}-{track.kind}")
        self._publish_tasks.add(task)
        task.add_done_callback(self._publish_tasks.discard)

    def inject_frame(self, kind: str, frame: Any) -> None:
        """Fan out a frame pulled elsewhere (a remote participant's sender)."""
        self.room._fan_out(self, kind, frame)

    async def leave(self) -> None:
        if self.left:
            return
        self.left = True
        await self._stop_publishing()
        self.room._leave(self)

    async def _publish(self, track: MediaTrack) -> None:
        while not self.left:
            try:
                frame = await track.recv()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an ended track ends its sender, as in aiortc
                logger.debug("track ended", extra={"kind": track.kind, "error": repr(exc)})
                return
            if self.room.ended or self.left:
                return
            self.room._fan_out(self, track.kind, frame)

    async def _stop_publishing(self) -> None:
        tasks = list(self._publish_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _deliver_data(self, message: dict[str, Any]) -> None:
        if self.left:
            return
        self.room.stats["delivered"] += 1
        for listener in self._data_listeners:
            try:
                listener(message)
            except Exception:
                logger.exception("data listener failed")

    def _deliver_frame(self, sender: str, kind: str, frame: Any, sent_at: float) -> None:
        if self.left:
            return
        received = ReceivedFrame(sender, kind, frame, sent_at, self.room._clock.now())
        for listener in self._frame_listeners:
            listener(received)

    def _emit_event(self, event: RoomEvent) -> None:
        for listener in self._event_listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("event listener failed")


class RoomEndWatcher:
    """Turns room events into the reason the room ended for the avatar."""

    def __init__(self, agent_id: AgentIdFn) -> None:
        self._agent_id = agent_id
        self.ended: asyncio.Future[api.EndReason] = asyncio.get_running_loop().create_future()

    def on_event(self, event: RoomEvent) -> None:
        if self.ended.done():
            return
        if event.kind == MEETING_ENDED:
            self.ended.set_result(api.EndReason.ROOM_ENDED)
        elif event.kind == PARTICIPANT_LEFT and event.participant_id == self._agent_id():
            self.ended.set_result(api.EndReason.AGENT_LEFT)


class LocalTransport(Transport):
    """The worker in a `LocalRoom` of its own process."""

    def __init__(self, room: LocalRoom, participant_id: str, agent_id: AgentIdFn) -> None:
        self._room = room
        self._participant_id = participant_id
        self._agent_id = agent_id
        self._listeners: list[DataListener] = []
        self._participant: LocalParticipant | None = None
        self._watcher: RoomEndWatcher | None = None

    def add_data_listener(self, listener: DataListener) -> None:
        self._listeners.append(listener)

    async def join(self, *, audio_track: MediaTrack, video_track: MediaTrack) -> None:
        self._watcher = RoomEndWatcher(self._agent_id)
        participant = self._room.join(self._participant_id)
        for listener in self._listeners:
            participant.add_data_listener(listener)
        participant.add_event_listener(self._watcher.on_event)
        participant.publish(audio_track)
        participant.publish(video_track)
        self._participant = participant

    async def send(self, payload: str | bytes, reliability: str) -> None:
        if self._participant is None:
            raise ConnectionError("not joined")
        await self._participant.send(payload, reliability)

    async def wait_ended(self) -> api.EndReason:
        if self._watcher is None:
            raise TransportError("not joined")
        return await asyncio.shield(self._watcher.ended)

    async def aclose(self) -> None:
        if self._participant is not None:
            await self._participant.leave()
