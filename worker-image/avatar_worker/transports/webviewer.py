"""The viewer page: watch and talk to the avatar of a local room from a browser, live.

`WebViewer` adds a page and its API to a `LocalRoomServer` (`avatar-worker room --serve`, the
demo's `--serve`), on the same port, before the server starts:

* `GET /` — the page (`viewer_page/`: plain HTML, CSS and JS, no build step, nothing fetched
  from outside). It joins a room over real WebRTC and shows the avatar in a `<video>` element,
  the session's status beside it, controls, and figures from the browser's own `getStats()`.
* `GET /viewer/api/rooms` — the rooms served (the page's picker) and the WAVs it can speak.
* `GET /viewer/api/rooms/ROOM/events` — the room's status as server-sent events, on change.
* `POST /viewer/api/rooms/ROOM/offer` — the browser's SDP offer (recvonly audio + video, ICE
  gathered); answered by a `webrtc.ViewerPeer` that forwards the avatar's frames.
* `POST /viewer/api/rooms/ROOM/speak` (JSON `{"wav": NAME, "endTurn": true}`, or a multipart
  upload with an `audio` file), `.../interrupt`, `.../end-turn` — acting as the agent
  (`agentvoice`).

Each room a page opens gets a `RoomViewer`: one participant of the room (`web-viewer`) that
receives every other participant's frames and data, like any member, and hands the avatar's
frames to the browsers' peers and everything to the room's `viewerstatus.RoomStatus`. When
everyone else has left, it leaves too (with the agent it joined as, if any), so an open room is
forgotten as it would be without a page, and the next session of that id starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from avatar_worker.transports import agentvoice, localroom, viewerstatus, webrtc
from avatar_worker.transports.base import JoinError
from avatar_worker.transports.roomserver import LocalRoomServer

logger = logging.getLogger(__name__)

PAGE_FILES = {  # what the page is made of → its content type
    "index.html": "text/html",
    "viewer.js": "text/javascript",
    "viewer.css": "text/css",
}
VIEWER_PARTICIPANT = "web-viewer"
PEERS_PER_ROOM = 8
PUSH_INTERVAL_S = 0.25  # status events at most this often
KEEPALIVE_S = 10.0  # an SSE comment when nothing changed for this long
MAX_UPLOAD_BYTES = 32 * 1024 * 1024


class RoomViewer:
    """The viewer's place in one room: a participant, the browsers' peers, status, voice."""

    def __init__(
        self,
        room: localroom.LocalRoom,
        agent_id: str,
        on_alone: Callable[[RoomViewer], None] | None = None,
    ) -> None:
        self.room = room
        self._on_alone = on_alone
        self._leave_atask: asyncio.Task[None] | None = None
        self.status = viewerstatus.RoomStatus(room.room_id, agent_id)
        self.voice = agentvoice.AgentVoice(room, agent_id)
        self.peers: dict[str, webrtc.ViewerPeer] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._next_peer = 0
        participant_id = VIEWER_PARTICIPANT
        while room.participant(participant_id) is not None:
            self._next_peer += 1
            participant_id = f"{VIEWER_PARTICIPANT}-{self._next_peer}"
        self.participant = room.join(participant_id)
        self.participant.add_frame_listener(self._on_frame)
        self.participant.add_data_listener(self.status.on_data)
        self.participant.add_event_listener(self._on_event)

    @property
    def ended(self) -> bool:
        return self.room.ended or self.participant.left

    async def add_peer(self, sdp: str, kind: str) -> dict[str, str]:
        self._next_peer += 1
        peer = webrtc.ViewerPeer(f"{self.room.room_id}/{self._next_peer}")
        self.peers[peer.id] = peer
        try:
            answer = await peer.answer(sdp, kind)
        except Exception:
            await self._drop(peer)
            raise
        task = asyncio.create_task(self._forget_when_closed(peer), name=f"peer-{peer.id}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return answer

    async def make_room_for_a_peer(self) -> None:
        """At most PEERS_PER_ROOM: the oldest goes (a reloaded page leaves its old peer behind
        until ICE consent fails, ~30 s later)."""
        while len(self.peers) >= PEERS_PER_ROOM:
            oldest = next(iter(self.peers.values()))
            await self._drop(oldest)

    async def aclose(self) -> None:
        watchers = list(self._watchers)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await self.voice.aclose()
        for peer in list(self.peers.values()):
            await peer.aclose()
        self.peers.clear()
        await self.participant.leave()

    def _on_event(self, event: localroom.RoomEvent) -> None:
        self.status.on_event(event)
        ours = {self.participant.id, self.voice.own_participant}
        alone = event.kind == localroom.PARTICIPANT_LEFT and set(self.room.participants) <= ours
        if alone and self._leave_atask is None:
            # everyone else left: leave too, so an open room is forgotten as it would be
            self._leave_atask = asyncio.get_running_loop().create_task(self._leave_alone())

    async def _leave_alone(self) -> None:
        await self.aclose()
        if self._on_alone is not None:
            self._on_alone(self)

    def _on_frame(self, received: localroom.ReceivedFrame) -> None:
        self.status.on_frame(received)
        if received.sender == self.status.avatar:
            for peer in self.peers.values():
                peer.push(received.kind, received.frame)

    async def _forget_when_closed(self, peer: webrtc.ViewerPeer) -> None:
        await peer.closed.wait()
        self.peers.pop(peer.id, None)

    async def _drop(self, peer: webrtc.ViewerPeer) -> None:
        self.peers.pop(peer.id, None)
        await peer.aclose()


class WebViewer:
    """The viewer page and its API on a `LocalRoomServer`; see the module docstring."""

    def __init__(
        self,
        server: LocalRoomServer,
        *,
        agent_id: str = "agent",
        wav_dir: Path | None = None,
    ) -> None:
        self._server = server
        self._agent_id = agent_id
        self._wav_dir = wav_dir
        self._viewers: dict[str, RoomViewer] = {}
        self._reports: dict[str, dict[str, Any]] = {}
        self._closing = asyncio.Event()
        app = server.app
        app.router.add_get("/", self._page)
        app.router.add_get("/viewer/{name}", self._page_file)
        app.router.add_get("/viewer/api/rooms", self._rooms)
        app.router.add_get("/viewer/api/rooms/{room}/events", self._events)
        app.router.add_post("/viewer/api/rooms/{room}/offer", self._offer)
        app.router.add_post("/viewer/api/rooms/{room}/speak", self._speak)
        app.router.add_post("/viewer/api/rooms/{room}/interrupt", self._interrupt)
        app.router.add_post("/viewer/api/rooms/{room}/end-turn", self._end_turn)

    @property
    def url(self) -> str:
        """The page's address (once the server has started)."""
        base = self._server.url_template.split("/rooms/")[0]
        return base.replace("ws://", "http://", 1) + "/"

    def report(self, room_id: str, status: dict[str, Any]) -> None:
        """A session's status (AvatarSession `status`, JSON names) for the page of `room_id`."""
        self._reports[room_id] = status
        viewer = self._viewers.get(room_id)
        if viewer is not None:
            viewer.status.report(status)

    async def aclose(self) -> None:
        self._closing.set()
        for viewer in list(self._viewers.values()):
            await viewer.aclose()
        self._viewers.clear()

    # --- rooms --------------------------------------------------------------------------

    async def _viewer(self, room_id: str) -> RoomViewer:
        """The room's viewer, joining the room now if no page looked at it before."""
        room = self._server.rooms.get(room_id)
        if room is None or room.ended:
            raise web.HTTPNotFound(text=f"no room {room_id!r} is served")
        viewer = self._viewers.pop(room_id, None)
        if viewer is not None and viewer.room is room and not viewer.ended:
            self._viewers[room_id] = viewer
            return viewer
        if viewer is not None:  # that room ended; a new one has its id
            await viewer.aclose()
        try:
            viewer = RoomViewer(room, self._agent_id, self._forget)
        except JoinError as exc:
            raise web.HTTPConflict(text=str(exc)) from exc
        if room_id in self._reports:
            viewer.status.report(self._reports[room_id])
        self._viewers[room_id] = viewer
        return viewer

    def _forget(self, viewer: RoomViewer) -> None:
        """A room's viewer left it, alone there: forget both."""
        if self._viewers.get(viewer.room.room_id) is viewer:
            del self._viewers[viewer.room.room_id]
        self._server.forget_if_done(viewer.room)

    def _wavs(self) -> list[str]:
        if self._wav_dir is None or not self._wav_dir.is_dir():
            return []
        return sorted(p.name for p in self._wav_dir.glob("*.wav") if p.is_file())

    # --- handlers -----------------------------------------------------------------------

    async def _page(self, _: web.Request) -> web.Response:
        return self._file("index.html")

    async def _page_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in PAGE_FILES:
            raise web.HTTPNotFound()
        return self._file(name)

    @staticmethod
    def _file(name: str) -> web.Response:
        page = importlib.resources.files("avatar_worker.transports") / "viewer_page" / name
        return web.Response(
            body=page.read_bytes(),
            content_type=PAGE_FILES[name],
            headers={"Cache-Control": "no-store"},
        )

    async def _rooms(self, _: web.Request) -> web.Response:
        rooms = []
        for room_id, room in sorted(self._server.rooms.items()):
            if room.ended:
                continue
            viewer = self._viewers.get(room_id)
            hidden = {viewer.participant.id} if viewer is not None else set()
            rooms.append(
                {
                    "roomId": room_id,
                    "participants": [p for p in room.participants if p not in hidden],
                    "avatar": viewer.status.avatar if viewer is not None else None,
                }
            )
        return web.json_response({"rooms": rooms, "wavs": self._wavs(), "agent": self._agent_id})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        viewer = await self._viewer(request.match_info["room"])
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        sent: str | None = None
        quiet_since = loop.time()
        try:
            while not self._closing.is_set():
                snapshot = json.dumps(viewer.status.snapshot(), separators=(",", ":"))
                if snapshot != sent:
                    await response.write(f"data: {snapshot}\n\n".encode())
                    sent, quiet_since = snapshot, loop.time()
                elif loop.time() - quiet_since > KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    quiet_since = loop.time()
                if viewer.ended:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), PUSH_INTERVAL_S)
        except (ConnectionError, RuntimeError):  # the page went away
            pass
        return response

    async def _offer(self, request: web.Request) -> web.Response:
        viewer = await self._viewer(request.match_info["room"])
        body = await _json_body(request)
        sdp, kind = body.get("sdp"), body.get("type", "offer")
        if not isinstance(sdp, str) or kind != "offer":
            raise web.HTTPBadRequest(text='expected {"sdp": "...", "type": "offer"}')
        await viewer.make_room_for_a_peer()
        try:
            answer = await viewer.add_peer(sdp, kind)
        except ValueError as exc:  # an SDP aiortc cannot take
            raise web.HTTPBadRequest(text=f"cannot take this offer: {exc}") from exc
        return web.json_response(answer)

    async def _speak(self, request: web.Request) -> web.Response:
        viewer = await self._viewer(request.match_info["room"])
        rate, channels = viewer.status.sample_rate, viewer.status.channels
        if request.content_type.startswith("multipart/"):
            pcm, end_turn = await self._uploaded(request, rate, channels)
        else:
            body = await _json_body(request)
            name = body.get("wav")
            if not isinstance(name, str) or name not in self._wavs():
                raise web.HTTPBadRequest(text=f"no such WAV to speak: {name!r}")
            assert self._wav_dir is not None
            path = self._wav_dir / name
            pcm = await asyncio.to_thread(_read, path, rate, channels)
            end_turn = body.get("endTurn", True) is not False
        try:
            seconds = await viewer.voice.speak(
                pcm, sample_rate=rate, channels=channels, end_turn=end_turn
            )
        except (JoinError, ConnectionError) as exc:
            raise web.HTTPConflict(text=f"cannot speak as the agent: {exc}") from exc
        return web.json_response({"seconds": round(seconds, 3), "endTurn": end_turn})

    async def _interrupt(self, request: web.Request) -> web.Response:
        viewer = await self._viewer(request.match_info["room"])
        viewer.status.interrupted()
        try:
            await viewer.voice.interrupt()
        except (JoinError, ConnectionError) as exc:
            raise web.HTTPConflict(text=f"cannot interrupt as the agent: {exc}") from exc
        return web.json_response({"sent": "INTERRUPT"})

    async def _end_turn(self, request: web.Request) -> web.Response:
        viewer = await self._viewer(request.match_info["room"])
        try:
            await viewer.voice.end_turn()
        except (JoinError, ConnectionError) as exc:
            raise web.HTTPConflict(text=f"cannot end the turn as the agent: {exc}") from exc
        return web.json_response({"sent": "segment_end"})

    async def _uploaded(self, request: web.Request, rate: int, channels: int) -> tuple[bytes, bool]:
        reader = await request.multipart()
        end_turn = True
        pcm: bytes | None = None
        while (part := await reader.next()) is not None:
            if not isinstance(part, aiohttp.BodyPartReader):
                continue
            if part.name == "endTurn":
                end_turn = (await part.text()).strip().lower() not in ("0", "false", "no")
            elif part.name == "audio":
                with tempfile.NamedTemporaryFile(suffix=_suffix(part.filename)) as spool:
                    size = 0
                    while chunk := await part.read_chunk():
                        size += len(chunk)
                        if size > MAX_UPLOAD_BYTES:
                            raise web.HTTPRequestEntityTooLarge(
                                max_size=MAX_UPLOAD_BYTES, actual_size=size
                            )
                        spool.write(chunk)
                    spool.flush()
                    pcm = await asyncio.to_thread(_read, Path(spool.name), rate, channels)
        if pcm is None:
            raise web.HTTPBadRequest(text="no audio file in the upload (field 'audio')")
        return pcm, end_turn


def _read(path: Path, rate: int, channels: int) -> bytes:
    try:
        return agentvoice.read_pcm(path, rate, channels)
    except agentvoice.AudioFileError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc


def _suffix(filename: str | None) -> str:
    match = re.search(r"\.[A-Za-z0-9]{1,8}$", filename or "")
    return match.group(0) if match else ".audio"


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=f"expected a JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body
