"""`LocalRoomClient`: the worker's `Transport` for a `LocalRoomServer` in another process.

Its tracks are pulled in the worker's process, in real time, exactly as a WebRTC sender pulls
them, and each frame goes over the websocket raw (`roomwire`); one lock keeps frames and data
messages from interleaving on the socket. One reader task hands data messages to the listeners
and room events to the same `RoomEndWatcher` the in-process transport uses; the server going
away ends the room. `connect()` joins without publishing, for agents and viewers in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp

from avatar_sdk import api
from avatar_worker.transports import roomwire
from avatar_worker.transports.base import (
    AgentIdFn,
    DataListener,
    JoinError,
    MediaTrack,
    Transport,
    TransportError,
)
from avatar_worker.transports.localroom import (
    FrameListener,
    ReceivedFrame,
    RoomEndWatcher,
    RoomEvent,
)


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
        self._watcher: RoomEndWatcher | None = None
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
        self._watcher = RoomEndWatcher(self._agent_id)
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
            await self._ws.send_bytes(roomwire.envelope(roomwire.KIND_DATA, header, body))

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
                    await self._ws.send_bytes(roomwire.encode_frame(track.kind, frame))
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
                kind, header, body = roomwire.open_envelope(message.data)
                if kind == roomwire.KIND_DATA:
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
                    name, frame = roomwire.decode_frame(kind, header, body)
                    now = loop.time()
                    for frame_listener in self._frame_listeners:
                        frame_listener(ReceivedFrame("", name, frame, now, now))
        if not self._watcher.ended.done():
            self._watcher.ended.set_result(api.EndReason.ROOM_ENDED)  # the server went away
