"""`LocalRoomServer`: local rooms served over a websocket, for workers in other processes.

One aiohttp application on 127.0.0.1 (or the address given) serves one room or, as VideoSDK
serves every meeting, many on the same port, each under its room id. A websocket joins one
participant; the server relays that participant's data messages, room events and (when it
subscribes) the other participants' frames to it, in order, from one writer task per socket,
and injects the frames it publishes into the room. The wire format is `roomwire`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import struct

import aiohttp
from aiohttp import web

from avatar_sdk import api, protocol
from avatar_worker.transports import roomwire
from avatar_worker.transports.base import JoinError
from avatar_worker.transports.localroom import LinkConditions, LocalParticipant, LocalRoom

logger = logging.getLogger(__name__)


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
        self.port = 0  # the port it listens on, once started

    @property
    def app(self) -> web.Application:
        """The aiohttp application, for more routes (the viewer page) before `start()`."""
        return self._app

    async def start(self) -> str:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = self.port = int(self._runner.addresses[0][1])
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

    def forget_if_done(self, room: LocalRoom) -> None:
        """An open room that has ended or emptied is forgotten (its id starts afresh)."""
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
        self.forget_if_done(room)
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
            self.forget_if_done(room)
            await ws.send_json({"event": "error", "message": str(exc)})
            await ws.close()
            return ws
        self._sockets.add(ws)
        outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        participant.add_data_listener(
            lambda m: outbox.put_nowait(
                roomwire.envelope(
                    roomwire.KIND_DATA,
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
                lambda f: outbox.put_nowait(roomwire.encode_frame(f.kind, f.frame))
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
            self.forget_if_done(room)
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
            kind, header, body = roomwire.open_envelope(data)
        except (ValueError, struct.error, json.JSONDecodeError):
            return
        if kind == roomwire.KIND_DATA:
            payload: str | bytes = body.decode("utf-8") if header.get("text") else body
            try:
                await participant.send(payload, str(header.get("reliability", protocol.RELIABLE)))
            except (ConnectionError, ValueError) as exc:
                logger.debug("data message refused", extra={"error": repr(exc)})
        else:
            participant.inject_frame(*roomwire.decode_frame(kind, header, body))
