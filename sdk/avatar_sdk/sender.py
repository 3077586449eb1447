"""FramedAudioSender: the agent's TTS audio to its avatar in the framed dialect.

It has the surface of videosdk-agents' stock `AvatarAudioOut` — `handle_audio_input(pcm)` (an
audio sink), `send_segment_end()`, `interrupt()`, `aclose()`, `participant_id`, and
`_set_meeting(meeting)`, the name the framework injects the Meeting through — but speaks
`avatar_sdk.protocol`'s framed dialect, which the worker also accepts:

* every PCM chunk carries its segment id and sequence number (UNRELIABLE, like the stock
  sender's), so the worker restores order and conceals a lost chunk with silence instead of
  shifting the rest of the turn;
* `segment_end` carries the segment's chunk count (RELIABLE), so lost trailing chunks are
  noticed, and is only sent for a segment that had audio (the framework may call it more than
  once per turn);
* `interrupt()` names the segments it stops — the one being sent and every earlier one that has
  not been acknowledged yet, since TTS runs ahead of playback and a finished turn may still be
  playing — so the worker drops exactly those and never the start of the next reply (the stock
  receiver's blind 300 ms cooldown does);
* the worker's `stream_ended` acks are consumed: `wait_stream_ended()`, `on_stream_ended`.

Wiring it into videosdk-agents 1.0.30 (whose own sender is created inside `JobContext.connect`)
is one line after `await ctx.connect()`: `sender.attach(ctx.room, pipeline)` puts it in the stock
sender's place (the room's audio-track sinks and the pipeline's `avatar`);
`KubernetesAvatar.framed_audio(ctx.room, pipeline)` builds one that matches the session's audio.

The Meeting contract relied on (videosdk 0.4.1): `await meeting.send(payload, {"reliability":
"RELIABLE"|"UNRELIABLE"})`, raising `ConnectionError` while not connected; listeners are objects
with `handle_event(action, data)` (what videosdk's `BaseEvent` dispatches on), data messages
arriving as action "data". Nothing here imports videosdk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, Protocol

from avatar_sdk import protocol

logger = logging.getLogger(__name__)

MAX_UNACKED_SEGMENTS: Final = 16  # segments kept for interrupts until their ack arrives
MAX_KEPT_ACKS: Final = 64  # acks kept for a late `wait_stream_ended`


class Meeting(Protocol):
    """The part of videosdk's `Meeting` the sender uses."""

    async def send(self, payload: bytes | str, options: dict[str, str]) -> Any: ...

    def add_event_listener(self, event_listener: Any) -> None: ...

    def remove_event_listener(self, event_listener: Any) -> None: ...


class _AckListener:
    """A Meeting event listener (videosdk's `BaseEvent`, duck-typed) for data messages."""

    def __init__(self, on_data: Callable[[Any], None]) -> None:
        self._on_data = on_data

    def handle_event(self, action: str, data: Any) -> None:
        if action == "data":
            self._on_data(data)


class FramedAudioSender:
    """An `AvatarAudioOut` look-alike that sends framed audio; see the module docstring."""

    video_track: None = None  # the framework reads these of an avatar
    audio_track: None = None

    def __init__(
        self,
        meeting: Meeting | None = None,
        *,
        sample_rate: int = 24_000,
        channels: int = 1,
        participant_id: str | None = None,
        on_stream_ended: Callable[[protocol.StreamEnded], None] | None = None,
    ) -> None:
        self._framer = protocol.SegmentFramer(sample_rate, channels)
        self._participant_id = participant_id
        self.on_stream_ended = on_stream_ended
        self._meeting: Meeting | None = None
        self._room: Any = None  # a room handler whose `.meeting` appears once it has joined
        self._listener = _AckListener(self._on_data)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()  # audio and segment ends leave in call order
        self._open = False  # the current segment has audio
        self._unacked: OrderedDict[int, None] = OrderedDict()  # sent, not acknowledged yet
        self._acks: OrderedDict[int, protocol.StreamEnded] = OrderedDict()
        self._waiters: dict[int, list[asyncio.Future[protocol.StreamEnded]]] = {}
        self._last_closed: int | None = None  # the segment last ended or interrupted
        self.chunks_sent = 0
        self.send_failures = 0
        self.dropped_chunks = 0  # audio that found no meeting to go to
        self.room_id: str | None = None
        if meeting is not None:
            self.set_meeting(meeting)

    # --- what the framework reads and calls -------------------------------------------------

    @property
    def participant_id(self) -> str | None:
        """The avatar's participant id; acks from anyone else are ignored when it is set."""
        return self._participant_id

    @property
    def segment_id(self) -> int:
        """The id the next audio goes out under."""
        return self._framer.segment_id

    def set_room_id(self, room_id: str) -> None:
        self.room_id = room_id

    async def connect(self) -> None:
        """Nothing to start: the avatar's worker is the operator's business."""

    def set_meeting(self, meeting: Meeting) -> None:
        """Send through `meeting` and listen to it for acks (replaces any previous one)."""
        if self._meeting is meeting:
            return
        self._detach_listener()
        self._meeting = meeting
        with contextlib.suppress(RuntimeError):  # acks are handed to the loop it was set in
            self._loop = asyncio.get_running_loop()
        meeting.add_event_listener(self._listener)

    _set_meeting = set_meeting  # the name videosdk-agents' JobContext injects the Meeting by

    def attach(self, room: Any, pipeline: Any = None) -> FramedAudioSender:
        """Take the place of videosdk-agents' stock `AvatarAudioOut`; returns self.

        Call after `await ctx.connect()` with `ctx.room` and the agent's pipeline: the sender
        replaces the pipeline's `avatar` (segment ends, interrupts) and the stock sender in the
        room's audio-track sinks (the TTS audio), and sends through `room.meeting` once the
        room has joined.
        """
        stock = getattr(pipeline, "avatar", None) if pipeline is not None else None
        for track_name in ("audio_track", "agent_audio_track"):
            sinks = getattr(getattr(room, track_name, None), "sinks", None)
            if not isinstance(sinks, list):
                continue
            replaced = False
            for i, sink in enumerate(sinks):
                if sink is stock or _is_stock_sender(sink):
                    sinks[i], replaced = self, True
            if not replaced and self not in sinks:
                sinks.append(self)
        if pipeline is not None:
            pipeline.avatar = self
            for owner in (pipeline, getattr(pipeline, "orchestrator", None)):
                speech = getattr(owner, "speech_generation", None)
                if speech is not None and getattr(speech, "avatar", None) in (stock, None):
                    speech.avatar = self
        self._room = room
        meeting = getattr(room, "meeting", None)
        if meeting is not None:
            self.set_meeting(meeting)
        return self

    async def handle_audio_input(self, audio_data: bytes) -> None:
        """Frame and send TTS PCM (s16le) of the current segment."""
        async with self._lock:
            frames = self._framer.audio(audio_data)
            if not frames:
                return
            if not self._open:
                self._open = True
                self._remember_unacked(self._framer.segment_id)
            meeting = self._current_meeting()
            if meeting is None:
                self.dropped_chunks += len(frames)
                return
            for frame in frames:
                if await self._send(meeting, frame, protocol.UNRELIABLE):
                    self.chunks_sent += 1

    async def send_segment_end(self) -> None:
        """The TTS turn is complete: close the segment (a no-op when it had no audio)."""
        async with self._lock:
            if not self._open:
                return
            self._open = False
            self._last_closed = self._framer.segment_id
            message = self._framer.segment_end()
            meeting = self._current_meeting()
            if meeting is not None:
                await self._send(meeting, message, protocol.RELIABLE)

    async def interrupt(self) -> None:
        """Stop now: the segment being sent and every unacknowledged one before it.

        Does not wait behind audio being sent: each interrupt names its segment, so order does
        not matter, and audio of an interrupted segment still in flight is dropped by its id.
        """
        messages = [
            protocol.encode_frame(protocol.KIND_INTERRUPT, segment_id=segment)
            for segment in self._unacked
            if not (self._open and segment == self._framer.segment_id)
        ]
        if self._open:
            self._open = False
            self._last_closed = self._framer.segment_id
            messages.append(self._framer.interrupt())
        meeting = self._current_meeting()
        if meeting is None:
            return
        for message in messages:
            await self._send(meeting, message, protocol.RELIABLE)

    async def wait_stream_ended(self, segment_id: int | None = None) -> protocol.StreamEnded:
        """The worker's ack of `segment_id` (default: the segment last ended or interrupted)."""
        segment = self._last_closed if segment_id is None else segment_id
        if segment is None:
            raise RuntimeError("no segment has been ended or interrupted yet")
        if segment in self._acks:
            return self._acks[segment]
        waiter: asyncio.Future[protocol.StreamEnded] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(segment, []).append(waiter)
        try:
            return await waiter
        finally:
            waiters = self._waiters.get(segment, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(segment, None)

    async def aclose(self) -> None:
        """Stop listening for acks; waiters get CancelledError."""
        self._detach_listener()
        self._meeting = None
        self._room = None
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.cancel()
        self._waiters.clear()

    # --- internals --------------------------------------------------------------------------

    def _current_meeting(self) -> Meeting | None:
        if self._meeting is None and self._room is not None:
            meeting = getattr(self._room, "meeting", None)
            if meeting is not None:
                self.set_meeting(meeting)
        return self._meeting

    async def _send(self, meeting: Meeting, payload: bytes, reliability: str) -> bool:
        try:
            await meeting.send(payload, {"reliability": reliability})
        except Exception as exc:  # ConnectionError while not connected; never stop the agent
            self.send_failures += 1
            if self.send_failures == 1 or self.send_failures % 100 == 0:
                logger.warning(
                    "avatar data message not sent",
                    extra={"error": repr(exc), "failures": self.send_failures},
                )
            return False
        return True

    def _remember_unacked(self, segment: int) -> None:
        self._unacked[segment] = None
        while len(self._unacked) > MAX_UNACKED_SEGMENTS:  # acks can be lost: forget the oldest
            self._unacked.popitem(last=False)

    def _detach_listener(self) -> None:
        if self._meeting is not None:
            with contextlib.suppress(Exception):  # not registered, or the meeting is gone
                self._meeting.remove_event_listener(self._listener)

    def _on_data(self, data: Any) -> None:
        """A data message from the room (any participant's): keep the worker's acks."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                loop.call_soon_threadsafe(self._on_data_in_loop, data)
                return
        self._on_data_in_loop(data)

    def _on_data_in_loop(self, data: Any) -> None:
        decoded = protocol.decode_data(data)
        ack = decoded.message
        if not isinstance(ack, protocol.StreamEnded):
            return
        if self._participant_id and decoded.sender not in (None, self._participant_id):
            return
        segment = ack.segment_id
        if segment is None:  # a stock ack names no segment: it is the oldest one open
            segment = next(iter(self._unacked), None)
            if segment is None:
                return
        self._unacked.pop(segment, None)
        self._acks[segment] = ack
        while len(self._acks) > MAX_KEPT_ACKS:
            self._acks.popitem(last=False)
        for waiter in self._waiters.pop(segment, []):
            if not waiter.done():
                waiter.set_result(ack)
        if self.on_stream_ended is not None:
            try:
                self.on_stream_ended(ack)
            except Exception:
                logger.exception("on_stream_ended callback failed")


def _is_stock_sender(sink: object) -> bool:
    """videosdk-agents' own AvatarAudioOut, recognised by name (it cannot be imported)."""
    return type(sink).__name__ == "AvatarAudioOut"
