"""The local room: a VideoSDK-like room on this machine, for tests, benchmarks and the demo.

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
with when it was sent and when it arrived. `LocalViewer` subscribes like a user's browser and
keeps what it received (and can record it to MP4).

For several processes, `LocalRoomServer` serves a room over a websocket on 127.0.0.1 (aiohttp)
and `LocalRoomClient` is the matching `Transport` for a worker in another process: its tracks
are pulled in the worker's process, in real time, and sent as raw frames over loopback.
Wire format: JSON text messages for control, binary messages `b"AVLR" | kind | header length |
JSON header | body` for data messages (kind 1), audio (2) and video (3).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import av
import numpy as np
from aiohttp import web

from avatar_sdk import api, protocol
from avatar_worker import clock as clocks
from avatar_worker import media, recorder
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

_MAGIC = b"AVLR"
_KIND_DATA, _KIND_AUDIO, _KIND_VIDEO = 1, 2, 3
_ENVELOPE = struct.Struct("<4sBI")


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


# ---------------------------------------------------------------------------------------------
# the worker's transport for a room in the same process


class _RoomEndWatcher:
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
        self._watcher: _RoomEndWatcher | None = None

    def add_data_listener(self, listener: DataListener) -> None:
        self._listeners.append(listener)

    async def join(self, *, audio_track: MediaTrack, video_track: MediaTrack) -> None:
        self._watcher = _RoomEndWatcher(self._agent_id)
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


# ---------------------------------------------------------------------------------------------
# what a viewer received


@dataclass
class ViewerLog:
    """Arrival-stamped frames, kept small: audio samples, and the mean luma of each picture."""

    audio: list[tuple[int, float, media.Samples]] = field(default_factory=list)  # pts, at, pcm
    video: list[tuple[int, float, float]] = field(default_factory=list)  # pts(90k), at, luma


class LocalViewer:
    """A user's browser in the room: subscribes to the avatar and keeps what arrives."""

    def __init__(
        self,
        participant: LocalParticipant,
        *,
        source: str | None = None,
        record_to: str | Path | None = None,
        width: int = 512,
        height: int = 512,
        fps: int = 30,
        sample_rate: int = 24_000,
        channels: int = 1,
    ) -> None:
        self.participant = participant
        self._source = source
        self.log = ViewerLog()
        self.last_video: av.VideoFrame | None = None
        self._recorder = (
            recorder.Mp4Recorder(
                record_to,
                width=width,
                height=height,
                fps=fps,
                sample_rate=sample_rate,
                channels=channels,
            )
            if record_to is not None
            else None
        )
        self._channels = channels
        participant.add_frame_listener(self._on_frame)

    def _on_frame(self, received: ReceivedFrame) -> None:
        if self._source is not None and received.sender != self._source:
            return
        frame = received.frame
        if isinstance(frame, av.AudioFrame):
            samples = media.frame_to_samples(frame, self._channels)
            self.log.audio.append((int(frame.pts or 0), received.arrived_at, samples))
            if self._recorder is not None:
                self._recorder.add_audio(frame)
        elif isinstance(frame, av.VideoFrame):
            luma = frame.to_ndarray(format="yuv420p")[: frame.height]
            self.log.video.append((int(frame.pts or 0), received.arrived_at, float(luma.mean())))
            self.last_video = frame
            if self._recorder is not None:
                self._recorder.add_video(frame)

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.close()


# ---------------------------------------------------------------------------------------------
# several processes: a room server on loopback, and the worker's client transport


def _envelope(kind: int, header: dict[str, Any], body: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _ENVELOPE.pack(_MAGIC, kind, len(head)) + head + body


def _open_envelope(message: bytes) -> tuple[int, dict[str, Any], bytes]:
    magic, kind, head_len = _ENVELOPE.unpack_from(message)
    if magic != _MAGIC:
        raise ValueError("not a local-room envelope")
    start = _ENVELOPE.size
    header = json.loads(message[start : start + head_len])
    return kind, header, message[start + head_len :]


def _encode_frame(kind: str, frame: Any) -> bytes:
    if kind == "audio":
        samples = media.frame_to_samples(frame, len(frame.layout.channels))
        header = {"pts": frame.pts, "rate": frame.sample_rate, "channels": samples.shape[1]}
        return _envelope(_KIND_AUDIO, header, samples.tobytes())
    i420 = frame.to_ndarray(format="yuv420p")
    tb = frame.time_base or media.VIDEO_TIME_BASE
    header = {
        "pts": frame.pts,
        "tb": [tb.numerator, tb.denominator],
        "width": frame.width,
        "height": frame.height,
    }
    return _envelope(_KIND_VIDEO, header, i420.tobytes())


def _decode_frame(kind: int, header: dict[str, Any], body: bytes) -> tuple[str, Any]:
    import fractions

    if kind == _KIND_AUDIO:
        samples = np.frombuffer(body, np.int16).reshape(-1, int(header["channels"]))
        audio = media.samples_to_frame(samples, int(header["rate"]))
        audio.pts = header["pts"]
        audio.time_base = fractions.Fraction(1, int(header["rate"]))
        return "audio", audio
    width, height = int(header["width"]), int(header["height"])
    i420 = np.frombuffer(body, np.uint8).reshape(height * 3 // 2, width)
    video = media.i420_to_frame(i420)
    video.pts = header["pts"]
    video.time_base = fractions.Fraction(*header["tb"])
    return "video", video


class LocalRoomServer:
    """Serves a `LocalRoom` on ws://127.0.0.1:PORT/rooms/ROOM?participant=ID&subscribe=0|1.

    More rooms can be served on the same port (`add_room`), one per session, as VideoSDK
    serves every meeting: `url_template` has `{roomId}` where a room's id goes. With
    `open_rooms` (`avatar-worker room`, the chart's local room) any valid room id is served: the
    room is created at its first join and forgotten once it has ended or emptied, so a later
    session of the same room id gets a fresh one.

    Besides the websocket: `GET /rooms` (each room's participants), `POST /rooms/ROOM/end`
    (the meeting closes for everyone, as when a VideoSDK meeting ends) and `GET /healthz`.
    """

    def __init__(
        self,
        room: LocalRoom | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        open_rooms: bool = False,
        conditions: LinkConditions | None = None,
    ) -> None:
        self.room = room
        self.rooms: dict[str, LocalRoom] = {room.room_id: room} if room is not None else {}
        self._host = host
        self._port = port
        self._open_rooms = open_rooms
        self._conditions = conditions
        self._app = web.Application()
        self._app.router.add_get("/rooms/{room}", self._handle)
        self._app.router.add_get("/rooms", self._list_rooms)
        self._app.router.add_post("/rooms/{room}/end", self._end_room)
        self._app.router.add_get("/healthz", self._healthz)
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self.url = ""
        self.url_template = ""

    async def start(self) -> str:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = int(self._runner.addresses[0][1])
        # a wildcard bind is reached on loopback from this machine
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        host = "[::1]" if host == "::" else host
        self.url_template = f"ws://{host}:{port}/rooms/{{roomId}}"
        self.url = self.url_for(self.room.room_id) if self.room is not None else self.url_template
        return self.url

    def url_for(self, room_id: str) -> str:
        return self.url_template.replace("{roomId}", room_id)

    def add_room(self, room: LocalRoom) -> str:
        """Serve another room on the same port; returns its URL (once started)."""
        if room.room_id in self.rooms and self.rooms[room.room_id] is not room:
            raise ValueError(f"room {room.room_id} is already served")
        self.rooms[room.room_id] = room
        return self.url_for(room.room_id) if self.url else ""

    async def aclose(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _room_for(self, room_id: str) -> LocalRoom | None:
        """The room served under `room_id`, created now for an open server."""
        room = self.rooms.get(room_id)
        if room is None and self._open_rooms and re.fullmatch(api.ROOM_ID_PATTERN, room_id):
            room = self.rooms[room_id] = LocalRoom(room_id, self._conditions)
        return room

    def _forget_if_done(self, room: LocalRoom) -> None:
        done = room.ended or not room.participants
        if self._open_rooms and done and self.rooms.get(room.room_id) is room:
            del self.rooms[room.room_id]

    async def _list_rooms(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "rooms": [
                    {"roomId": room_id, "participants": room.participants, "ended": room.ended}
                    for room_id, room in sorted(self.rooms.items())
                ]
            }
        )

    async def _end_room(self, request: web.Request) -> web.Response:
        room = self.rooms.get(request.match_info["room"])
        if room is None:
            raise web.HTTPNotFound(text="no such room")
        participants = room.participants
        await room.end()
        self._forget_if_done(room)
        return web.json_response({"roomId": room.room_id, "ended": participants})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True, "rooms": len(self.rooms)})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        room = self._room_for(request.match_info["room"])
        if room is None:
            raise web.HTTPNotFound(text="no such room")
        participant_id = request.query.get("participant", "")
        subscribe = request.query.get("subscribe", "0") == "1"
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024, heartbeat=None)
        await ws.prepare(request)
        try:
            participant = room.join(participant_id)
        except JoinError as exc:
            self._forget_if_done(room)
            await ws.send_json({"event": "error", "message": str(exc)})
            await ws.close()
            return ws
        self._sockets.add(ws)
        outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        participant.add_data_listener(
            lambda m: outbox.put_nowait(
                _envelope(
                    _KIND_DATA,
                    {
                        "from": m["from"],
                        "reliability": m["reliability"],
                        "timestamp": m["timestamp"],
                        "text": isinstance(m["payload"], str),
                    },
                    m["payload"].encode("utf-8", "surrogatepass")
                    if isinstance(m["payload"], str)
                    else m["payload"],
                )
            )
        )
        participant.add_event_listener(
            lambda e: outbox.put_nowait(
                json.dumps({"event": e.kind, "participant": e.participant_id})
            )
        )
        if subscribe:
            participant.add_frame_listener(
                lambda f: outbox.put_nowait(_encode_frame(f.kind, f.frame))
            )
        writer = asyncio.create_task(self._write(ws, outbox))
        await ws.send_json({"event": "joined", "participant": participant_id})
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    await self._on_binary(participant, message.data)
                elif (
                    message.type == aiohttp.WSMsgType.TEXT
                    and json.loads(message.data).get("op") == "leave"
                ):
                    break
        finally:
            await participant.leave()
            self._forget_if_done(room)
            outbox.put_nowait(None)
            await asyncio.gather(writer, return_exceptions=True)
            self._sockets.discard(ws)
            await ws.close()
        return ws

    @staticmethod
    async def _write(ws: web.WebSocketResponse, outbox: asyncio.Queue[str | bytes | None]) -> None:
        while (item := await outbox.get()) is not None:
            if ws.closed:
                return
            if isinstance(item, str):
                await ws.send_str(item)
            else:
                await ws.send_bytes(item)

    @staticmethod
    async def _on_binary(participant: LocalParticipant, data: bytes) -> None:
        try:
            kind, header, body = _open_envelope(data)
        except (ValueError, struct.error, json.JSONDecodeError):
            return
        if kind == _KIND_DATA:
            payload: str | bytes = body.decode("utf-8") if header.get("text") else body
            try:
                await participant.send(payload, str(header.get("reliability", protocol.RELIABLE)))
            except (ConnectionError, ValueError) as exc:
                logger.debug("data message refused", extra={"error": repr(exc)})
        else:
            participant.inject_frame(*_decode_frame(kind, header, body))


class LocalRoomClient(Transport):
    """A participant of a `LocalRoomServer` in another process (the worker's transport)."""

    def __init__(
        self,
        url: str,
        participant_id: str,
        agent_id: AgentIdFn,
        *,
        subscribe: bool = False,
        join_timeout: float = 10.0,
    ) -> None:
        self._url = url
        self._participant_id = participant_id
        self._agent_id = agent_id
        self._subscribe = subscribe
        self._join_timeout = join_timeout
        self._listeners: list[DataListener] = []
        self._frame_listeners: list[FrameListener] = []
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._watcher: _RoomEndWatcher | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()

    def add_data_listener(self, listener: DataListener) -> None:
        self._listeners.append(listener)

    def add_frame_listener(self, listener: FrameListener) -> None:
        self._frame_listeners.append(listener)

    async def join(self, *, audio_track: MediaTrack, video_track: MediaTrack) -> None:
        await self.connect()
        for track in (audio_track, video_track):
            self._spawn(self._publish(track), f"publish-{track.kind}")

    async def connect(self) -> None:
        """Join without publishing (agents and viewers in tests)."""
        self._watcher = _RoomEndWatcher(self._agent_id)
        self._session = aiohttp.ClientSession()
        query = {"participant": self._participant_id, "subscribe": "1" if self._subscribe else "0"}
        try:
            self._ws = await asyncio.wait_for(
                self._session.ws_connect(self._url, params=query, max_msg_size=16 * 1024 * 1024),
                self._join_timeout,
            )
            first = await asyncio.wait_for(self._ws.receive_json(), self._join_timeout)
        except (aiohttp.ClientError, TimeoutError, ValueError, TypeError) as exc:
            await self._session.close()
            raise JoinError(f"cannot join the local room at {self._url}: {exc!r}") from exc
        if first.get("event") != "joined":
            await self._session.close()
            raise JoinError(f"local room refused the join: {first.get('message')}")
        self._spawn(self._read(), "read")

    async def send(self, payload: str | bytes, reliability: str) -> None:
        if self._ws is None or self._ws.closed:
            raise ConnectionError("not connected to the local room")
        body = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
        header = {"reliability": reliability, "text": isinstance(payload, str)}
        async with self._send_lock:
            await self._ws.send_bytes(_envelope(_KIND_DATA, header, body))

    async def wait_ended(self) -> api.EndReason:
        if self._watcher is None:
            raise TransportError("not joined")
        return await asyncio.shield(self._watcher.ended)

    async def aclose(self) -> None:
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await self._ws.send_json({"op": "leave"})
            await self._ws.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, track: MediaTrack) -> None:
        while self._ws is not None and not self._ws.closed:
            try:
                frame = await track.recv()
            except asyncio.CancelledError:
                raise
            except Exception:
                return
            async with self._send_lock:
                try:
                    await self._ws.send_bytes(_encode_frame(track.kind, frame))
                except (ConnectionError, aiohttp.ClientError):
                    return

    async def _read(self) -> None:
        assert self._ws is not None and self._watcher is not None
        loop = asyncio.get_running_loop()
        async for message in self._ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(message.data)
                self._watcher.on_event(RoomEvent(event.get("event", ""), event.get("participant")))
            elif message.type == aiohttp.WSMsgType.BINARY:
                kind, header, body = _open_envelope(message.data)
                if kind == _KIND_DATA:
                    payload: str | bytes = body.decode("utf-8") if header.get("text") else body
                    data = {
                        "payload": payload,
                        "from": header.get("from"),
                        "timestamp": header.get("timestamp"),
                        "reliability": header.get("reliability"),
                    }
                    for listener in self._listeners:
                        listener(data)
                else:
                    name, frame = _decode_frame(kind, header, body)
                    now = loop.time()
                    for frame_listener in self._frame_listeners:
                        frame_listener(ReceivedFrame("", name, frame, now, now))
        if not self._watcher.ended.done():
            self._watcher.ended.set_result(api.EndReason.ROOM_ENDED)  # the server went away
