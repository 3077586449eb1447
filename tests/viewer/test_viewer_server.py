"""The viewer page's server side, without a browser: its API, the agent's voice, the status it
pushes, and real WebRTC to an aiortc peer standing in for the browser (on loopback, no STUN).

A fake avatar joins the room in-process and publishes audio and video frames as a worker does;
it acknowledges each turn as the worker would, so the status can be followed turn by turn.
"""

from __future__ import annotations

import asyncio
import fractions
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from avatar_sdk import protocol
from avatar_worker import media
from avatar_worker.transports import agentvoice, localroom, viewerstatus, webrtc
from avatar_worker.transports.roomserver import LocalRoomServer
from avatar_worker.transports.webviewer import WebViewer

ROOM = "room-1"
AGENT = "agent"
RATE = 24_000


def _audio(pts: int, value: int = 0) -> Any:
    frame = media.samples_to_frame(np.full((480, 1), value, np.int16), RATE)
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, RATE)
    return frame


def _video(pts: int, luma: int = 128) -> Any:
    i420 = np.full((64 * 3 // 2, 64), 128, np.uint8)
    i420[:64] = luma
    frame = media.i420_to_frame(i420)
    frame.pts = pts
    frame.time_base = media.VIDEO_TIME_BASE
    return frame


class FakeAvatar:
    """Publishes 20 ms audio and 30 fps video frames; acks every turn's segment_end."""

    def __init__(self, room: localroom.LocalRoom, participant_id: str = "avatar") -> None:
        self.participant = room.join(participant_id)
        self.received: list[protocol.Message] = []
        self.participant.add_data_listener(self._on_data)
        self._task = asyncio.create_task(self._publish())

    def _on_data(self, message: dict[str, Any]) -> None:
        decoded = protocol.decode_data(message)
        if decoded.sender != AGENT:
            return
        self.received.append(decoded.message)
        if isinstance(decoded.message, protocol.SegmentEnd | protocol.Interrupt):
            interrupted = isinstance(decoded.message, protocol.Interrupt)
            ack = protocol.encode_stream_ended(1.25, interrupted)
            asyncio.get_running_loop().create_task(self.participant.send(ack, protocol.RELIABLE))

    async def _publish(self) -> None:
        tick = 0
        while True:
            self.participant.inject_frame("audio", _audio(tick * 480))
            if tick % 3 == 0:  # 20 ms audio, ~33 ms video (close enough for a test)
                self.participant.inject_frame("video", _video(tick * 1800, 40 + tick % 100))
            tick += 1
            await asyncio.sleep(0.02)

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.participant.leave()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[WebViewer, localroom.LocalRoom, str]]:
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    (wavs / "tone.wav").write_bytes(_wav(0.5))
    server = LocalRoomServer(open_rooms=True)
    viewer = WebViewer(server, agent_id=AGENT, wav_dir=wavs)
    await server.start()
    room = localroom.LocalRoom(ROOM)
    server.add_room(room)
    try:
        yield viewer, room, viewer.url
    finally:
        await viewer.aclose()
        await server.aclose()


def _wav(seconds: float) -> bytes:
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        t = np.arange(int(16_000 * seconds)) / 16_000
        out.writeframes((np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes())
    return buffer.getvalue()


async def _until(predicate: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_the_page_and_its_files_are_served(
    served: tuple[WebViewer, localroom.LocalRoom, str],
) -> None:
    _, _, url = served
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            page = await response.text()
            assert response.status == 200 and "<video" in page and "viewer.js" in page
        for name, kind in (("viewer.js", "text/javascript"), ("viewer.css", "text/css")):
            async with http.get(f"{url}viewer/{name}") as response:
                assert (response.status, response.content_type) == (200, kind)
        async with http.get(f"{url}viewer/../cli.py") as response:
            assert response.status == 404


async def test_the_picker_lists_every_room_and_the_wavs_but_not_the_viewer_itself(
    served: tuple[WebViewer, localroom.LocalRoom, str],
) -> None:
    viewer, room, url = served
    other = localroom.LocalRoom("room-2")
    viewer._server.add_room(other)
    avatar = FakeAvatar(room)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}viewer/api/rooms/{ROOM}/end-turn") as response:
                assert response.status == 200  # the viewer joined room-1 (and so did the agent)
            async with http.get(f"{url}viewer/api/rooms") as response:
                listing = await response.json()
            async with http.post(f"{url}viewer/api/rooms/no-such-room/offer", json={}) as r:
                assert r.status == 404
        assert [r["roomId"] for r in listing["rooms"]] == [ROOM, "room-2"]
        assert sorted(listing["rooms"][0]["participants"]) == [AGENT, "avatar"]
        assert listing["wavs"] == ["tone.wav"]
        assert listing["agent"] == AGENT
    finally:
        await avatar.aclose()


async def test_speak_streams_stock_pcm_as_the_agent_then_ends_the_turn(
    served: tuple[WebViewer, localroom.LocalRoom, str],
) -> None:
    _, room, url = served
    avatar = FakeAvatar(room)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}viewer/api/rooms/{ROOM}/speak", json={"wav": "tone.wav"}
            ) as response:
                assert response.status == 200
                assert (await response.json())["seconds"] == pytest.approx(0.5, abs=0.01)
            await _until(lambda: any(isinstance(m, protocol.SegmentEnd) for m in avatar.received))
            async with http.post(
                f"{url}viewer/api/rooms/{ROOM}/speak", json={"wav": "../secret.wav"}
            ) as response:
                assert response.status == 400
        chunks = [m for m in avatar.received if isinstance(m, protocol.AudioChunk)]
        assert all(not c.framed for c in chunks)  # what stock AvatarAudioOut sends
        pcm = b"".join(c.pcm for c in chunks)
        assert len(pcm) == 2 * RATE // 2  # 0.5 s resampled to the avatar's 24 kHz, mono
        assert isinstance(avatar.received[-1], protocol.SegmentEnd)
    finally:
        await avatar.aclose()


async def test_an_upload_is_spoken_and_barge_in_stops_it_with_interrupt(
    served: tuple[WebViewer, localroom.LocalRoom, str],
) -> None:
    _, room, url = served
    avatar = FakeAvatar(room)
    try:
        async with aiohttp.ClientSession() as http:
            form = aiohttp.FormData()
            form.add_field("endTurn", "true")
            form.add_field("audio", _wav(3.0), filename="long.wav", content_type="audio/wav")
            async with http.post(f"{url}viewer/api/rooms/{ROOM}/speak", data=form) as response:
                assert response.status == 200, await response.text()
            await _until(lambda: len(avatar.received) >= 3)
            async with http.post(f"{url}viewer/api/rooms/{ROOM}/interrupt") as response:
                assert response.status == 200
            await _until(lambda: isinstance(avatar.received[-1], protocol.Interrupt))
            sent = len(avatar.received)
            await asyncio.sleep(0.3)
        assert len(avatar.received) == sent  # streaming stopped at the barge in
        assert not any(isinstance(m, protocol.SegmentEnd) for m in avatar.received)
    finally:
        await avatar.aclose()


async def test_status_events_follow_a_turn_from_speaking_to_idle(
    served: tuple[WebViewer, localroom.LocalRoom, str],
) -> None:
    viewer, room, url = served
    avatar = FakeAvatar(room)
    states: list[str] = []
    snapshots: list[dict[str, Any]] = []
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}viewer/api/rooms/{ROOM}/events") as events,
        ):
            assert events.content_type == "text/event-stream"

            async def read() -> None:
                async for line in events.content:
                    if line.startswith(b"data: "):
                        snapshot = json.loads(line[6:])
                        snapshots.append(snapshot)
                        state = snapshot["playback"]["state"]
                        if not states or states[-1] != state:
                            states.append(state)

            reader = asyncio.create_task(read())
            async with http.post(f"{url}viewer/api/rooms/{ROOM}/speak", json={"wav": "tone.wav"}):
                pass
            await _until(lambda: states[-2:] == ["Speaking", "Idle"])
            reader.cancel()
        last = snapshots[-1]
        assert last["phase"] == "Joined" and last["avatar"] == "avatar"
        assert last["playback"]["segments"] == 1 and last["playback"]["interrupts"] == 0
        assert last["playback"]["position"] == 1.25
        assert last["acks"][-1]["interrupted"] is False
        assert last["source"] == "room"
        viewer.report(ROOM, {"phase": "Joined", "placement": {"node": "h100-0", "gpu": 1}})
        reported = viewer._viewers[ROOM].status.snapshot()
        assert (reported["source"], reported["node"], reported["gpu"]) == ("session", "h100-0", 1)
    finally:
        await avatar.aclose()


async def test_a_webrtc_peer_receives_the_avatars_audio_and_video(
    served: tuple[WebViewer, localroom.LocalRoom, str],
) -> None:
    _, room, url = served
    avatar = FakeAvatar(room)
    browser = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    received: dict[str, list[Any]] = {"audio": [], "video": []}
    readers: list[asyncio.Task[None]] = []

    @browser.on("track")
    def on_track(track: Any) -> None:
        async def read() -> None:
            while True:
                received[track.kind].append(await track.recv())

        readers.append(asyncio.create_task(read()))

    try:
        browser.addTransceiver("video", direction="recvonly")
        browser.addTransceiver("audio", direction="recvonly")
        await browser.setLocalDescription(await browser.createOffer())
        async with aiohttp.ClientSession() as http:
            offer = {"sdp": browser.localDescription.sdp, "type": "offer"}
            async with http.post(f"{url}viewer/api/rooms/{ROOM}/offer", json=offer) as response:
                assert response.status == 200
                answer = await response.json()
        assert "127.0.0.1" in answer["sdp"]  # loopback is a candidate (no STUN)
        await browser.setRemoteDescription(RTCSessionDescription(**answer))
        await _until(lambda: len(received["video"]) >= 10 and len(received["audio"]) >= 10, 20)
        picture = received["video"][-1]
        assert (picture.width, picture.height) == (64, 64)
    finally:
        for reader in readers:
            reader.cancel()
        await browser.close()
        await avatar.aclose()


def test_forwarded_audio_is_48khz_stereo_on_a_continuous_clock() -> None:
    async def main() -> list[Any]:
        track = webrtc.ForwardedTrack("audio")
        for pts in (0, 480, 48_000):  # a gap: the RTP clock does not jump
            track.push(_audio(pts, 1000))
        return [await track.recv() for _ in range(3)]

    frames = asyncio.run(main())
    assert [f.pts for f in frames] == [0, 960, 1920]
    assert {(f.sample_rate, f.layout.name, f.samples) for f in frames} == {(48_000, "stereo", 960)}
    assert np.all(frames[1].to_ndarray() == 1000)


def test_forwarded_video_never_goes_back_in_time_and_drops_the_oldest() -> None:
    async def main() -> tuple[list[int], int]:
        track = webrtc.ForwardedTrack("video")
        out = []
        for pts in (90_000, 93_000, 3_000):  # a new worker's clock starts again near 0
            track.push(_video(pts))
            out.append((await track.recv()).pts)
        for pts in range(10):
            track.push(_video(100_000 + pts * 3000))
        return out, track.dropped

    pts, dropped = asyncio.run(main())
    assert pts[0] < pts[1] < pts[2]
    assert dropped == 10 - webrtc.VIDEO_QUEUE_FRAMES


def test_room_status_ends_when_the_avatar_leaves() -> None:
    status = viewerstatus.RoomStatus(ROOM, AGENT)
    frame = localroom.ReceivedFrame("avatar", "video", _video(0), 0.0, 0.0)
    status.on_frame(frame)
    assert status.snapshot()["phase"] == "Joined"
    status.on_event(localroom.RoomEvent(localroom.PARTICIPANT_LEFT, "someone-else"))
    assert status.snapshot()["phase"] == "Joined"
    status.on_event(localroom.RoomEvent(localroom.PARTICIPANT_LEFT, "avatar"))
    assert (status.snapshot()["phase"], status.avatar) == ("Ended", None)


def test_unreadable_audio_is_refused_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(agentvoice.AudioFileError, match="cannot open"):
        agentvoice.read_pcm(bad, RATE, 1)


def test_room_serve_is_a_flag_of_the_room_command() -> None:
    from avatar_worker import cli

    args = cli.build_parser().parse_args(["room", "--serve", "--port", "0"])
    assert (args.serve, args.port, args.agent, args.wav_dir) == (True, 0, "agent", None)
    assert cli.build_parser().parse_args(["room"]).serve is False


async def test_a_ninth_page_in_a_room_replaces_the_oldest_peer() -> None:
    from avatar_worker.transports import webviewer

    room = localroom.LocalRoom(ROOM)
    viewer = webviewer.RoomViewer(room, AGENT)
    peers = [webrtc.ViewerPeer(f"p{i}") for i in range(webviewer.PEERS_PER_ROOM)]
    viewer.peers = {peer.id: peer for peer in peers}
    await viewer.make_room_for_a_peer()
    assert list(viewer.peers) == [p.id for p in peers[1:]] and peers[0].closed.is_set()
    await viewer.aclose()
    assert all(p.closed.is_set() for p in peers) and viewer.participant.left


async def test_an_open_room_is_forgotten_once_only_the_viewer_is_left() -> None:
    from avatar_worker.transports.roomclient import LocalRoomClient

    server = LocalRoomServer(open_rooms=True)
    viewer = WebViewer(server, agent_id=AGENT)
    await server.start()
    worker = LocalRoomClient(server.url_for("room-x"), "avatar", lambda: AGENT)
    try:
        await worker.connect()
        async with aiohttp.ClientSession() as http:
            # the page ends a turn: the viewer joins, and as the agent (none was there)
            async with http.post(f"{viewer.url}viewer/api/rooms/room-x/end-turn") as response:
                assert response.status == 200
            assert sorted(server.rooms["room-x"].participants) == [AGENT, "avatar", "web-viewer"]
            await worker.aclose()  # the session ends: its worker leaves
            await _until(lambda: "room-x" not in server.rooms)
            async with http.get(f"{viewer.url}viewer/api/rooms") as response:
                assert (await response.json())["rooms"] == []
        again = LocalRoomClient(server.url_for("room-x"), "avatar", lambda: AGENT)
        await again.connect()  # the next session of that id gets a fresh room
        assert server.rooms["room-x"].participants == ["avatar"]
        await again.aclose()
    finally:
        await viewer.aclose()
        await server.aclose()
