"""The local room: VideoSDK's data-channel semantics, lossy links, viewers, several processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
from worker_support import AGENT, LoudnessRenderer, loud_config, run_virtual, signal

from avatar_sdk import api, protocol
from avatar_worker.pipeline import AvatarPipeline, PipelineConfig
from avatar_worker.session import run_session
from avatar_worker.transports.base import JoinError
from avatar_worker.transports.localroom import LinkConditions, LocalRoom, LocalTransport
from avatar_worker.transports.roomclient import LocalRoomClient
from avatar_worker.transports.roomserver import LocalRoomServer
from avatar_worker.transports.viewer import LocalViewer

HERE = Path(__file__).parent


def test_binary_that_is_valid_utf8_arrives_as_str_like_videosdk() -> None:
    async def main() -> list[Any]:
        room = LocalRoom()
        sender, receiver = room.join("a"), room.join("b")
        got: list[Any] = []
        receiver.add_data_listener(lambda m: got.append(m["payload"]))
        await sender.send(bytes(960), protocol.UNRELIABLE)  # digital silence
        await sender.send(b"\xff\xfe", protocol.UNRELIABLE)  # not UTF-8
        await asyncio.sleep(0.01)
        return got

    silence, binary = run_virtual(main())
    assert silence == "\x00" * 960 and binary == b"\xff\xfe"


def test_lossy_links_lose_and_reorder_unreliable_messages_only() -> None:
    async def main() -> tuple[list[int], list[int]]:
        room = LocalRoom(conditions=LinkConditions(latency=0.01, jitter=0.03, loss=0.2, seed=3))
        sender, receiver = room.join("a"), room.join("b")
        unreliable: list[int] = []
        ordered: list[int] = []

        def on_data(message: dict[str, Any]) -> None:
            text = message["payload"]
            kind, number = text.split(":")
            (ordered if kind == "r" else unreliable).append(int(number))

        receiver.add_data_listener(on_data)
        for i in range(200):
            await sender.send(f"u:{i}", protocol.UNRELIABLE)
            await sender.send(f"r:{i}", protocol.RELIABLE)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        return unreliable, ordered

    unreliable, ordered = run_virtual(main())
    assert ordered == list(range(200))
    assert 120 < len(unreliable) < 190
    assert unreliable != sorted(unreliable)


def _session(room: LocalRoom, **config: Any) -> tuple[AvatarPipeline, LocalTransport]:
    cfg = PipelineConfig(width=32, height=32, **config)
    renderer = LoudnessRenderer(loud_config(32, 32, cfg.fps, cfg.sample_rate))
    pipeline = AvatarPipeline(renderer, config=cfg, agent_participant_id=AGENT)
    transport = LocalTransport(room, "avatar", lambda: pipeline.receiver.agent_participant_id)
    return pipeline, transport


def test_framed_audio_over_a_lossy_room_plays_in_order_with_gaps_concealed() -> None:
    pcm = signal(24_000 * 3)
    framer = protocol.SegmentFramer()
    chunks = [c for i in range(0, len(pcm), 960) for c in framer.audio(pcm[i : i + 960])]

    async def main() -> tuple[LocalViewer, list[Any], AvatarPipeline]:
        room = LocalRoom(conditions=LinkConditions(latency=0.02, jitter=0.03, loss=0.05, seed=7))
        pipeline, transport = _session(room)
        agent = room.join(AGENT)
        viewer = LocalViewer(room.join("viewer"), source="avatar")
        acks: list[Any] = []
        agent.add_data_listener(lambda m: acks.append(protocol.decode_payload(m["payload"])))
        session = asyncio.create_task(run_session(pipeline, transport, participant_id="avatar"))
        await asyncio.sleep(0.2)
        for chunk in chunks:  # a TTS streaming at twice real time
            await agent.send(chunk, protocol.UNRELIABLE)
            await asyncio.sleep(0.01)
        await agent.send(framer.segment_end(), protocol.RELIABLE)
        await asyncio.sleep(2.0)
        await agent.leave()
        reason = await session
        assert reason is api.EndReason.AGENT_LEFT
        return viewer, acks, pipeline

    viewer, acks, pipeline = run_virtual(main())
    (ack,) = acks
    assert ack == protocol.StreamEnded(3.0, False, 1)  # lost chunks took their place in time
    stats = pipeline.receiver.stats
    assert stats.concealed > 0 and stats.concealed_samples == stats.concealed * 480
    received = np.concatenate([s.reshape(-1) for _, _, s in viewer.log.audio])
    sent = np.frombuffer(pcm, np.int16)
    speech = np.flatnonzero(received)
    start = speech[0]
    window = received[start : start + len(sent)]
    kept = window != 0
    assert np.array_equal(window[kept], sent[kept])  # in order, in place; losses are silence
    assert kept.sum() == len(sent) - stats.concealed_samples


def test_the_viewer_records_what_it_receives_to_mp4(tmp_path: Path) -> None:
    out = tmp_path / "viewer.mp4"

    async def main() -> None:
        room = LocalRoom(conditions=LinkConditions(latency=0.03))
        pipeline, transport = _session(room)
        agent = room.join(AGENT)
        viewer = LocalViewer(room.join("viewer"), record_to=out, width=32, height=32)
        session = asyncio.create_task(run_session(pipeline, transport, participant_id="avatar"))
        await asyncio.sleep(0.3)
        for chunk in protocol.pcm_chunks(signal(24_000)):
            await agent.send(chunk, protocol.UNRELIABLE)
        await agent.send(protocol.encode_segment_end(), protocol.RELIABLE)
        await asyncio.sleep(1.5)
        await room.end()
        assert await session is api.EndReason.ROOM_ENDED
        viewer.close()

    run_virtual(main())
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert audio.start_time == 0 and video.start_time == 0
        frames = sum(1 for _ in container.decode(video))
    assert 50 <= frames <= 60  # ~1.8 s at 30 fps


def test_a_worker_in_another_process_joins_the_room_server() -> None:
    """`avatar-worker run` with transport local, in its own process, over loopback."""

    async def main() -> tuple[int, list[Any], LocalViewer, float]:
        room = LocalRoom("demo-room")
        server = LocalRoomServer(room)
        url = await server.start()
        env = {
            **os.environ,
            "AVATAR_SESSION_NAME": "demo",
            "AVATAR_ROOM_ID": "demo-room",
            "AVATAR_PARTICIPANT_ID": "avatar",
            "AVATAR_AGENT_PARTICIPANT_ID": AGENT,
            "AVATAR_TRANSPORT": "local",
            "AVATAR_LOCAL_ROOM_URL": url,
            "AVATAR_STATUS_REPORTING": "none",
            "AVATAR_HEALTH_PORT": "0",
            "AVATAR_VIDEO_WIDTH": "64",
            "AVATAR_VIDEO_HEIGHT": "64",
        }
        bootstrap = (
            f"import sys; sys.path.insert(0, {str(HERE)!r}); import worker_support; "
            "from avatar_worker import cli; "
            "cli._create_renderer = lambda name, config: worker_support.LoudnessRenderer(config); "
            "cli._device = lambda requested: 'cpu'; "
            "sys.exit(cli.main(['run']))"
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", bootstrap, env=env, stderr=subprocess.PIPE
        )
        agent = room.join(AGENT)
        viewer = LocalViewer(room.join("viewer"), source="avatar", width=64, height=64)
        acks: list[Any] = []
        agent.add_data_listener(lambda m: acks.append(protocol.decode_payload(m["payload"])))
        try:
            deadline = time.monotonic() + 30
            while "avatar" not in room.participants:
                assert time.monotonic() < deadline, "the worker never joined"
                assert process.returncode is None
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            for chunk in protocol.pcm_chunks(signal(12_000)):
                await agent.send(chunk, protocol.UNRELIABLE)
            await agent.send(protocol.encode_segment_end(), protocol.RELIABLE)
            while not acks:
                assert time.monotonic() < deadline, "no stream_ended"
                await asyncio.sleep(0.05)
            await agent.leave()
            started = time.monotonic()
            code = await asyncio.wait_for(process.wait(), 10)
            exit_s = time.monotonic() - started
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await server.aclose()
        return code, acks, viewer, exit_s

    code, acks, viewer, exit_s = asyncio.run(main())
    assert code == 0
    assert acks == [protocol.StreamEnded(0.5, False)]
    received = np.concatenate([s.reshape(-1) for _, _, s in viewer.log.audio])
    assert received[received != 0].tobytes() == signal(12_000)
    assert len(viewer.log.video) > 10 and max(luma for _, _, luma in viewer.log.video) > 50
    assert exit_s < 5


def test_one_room_server_serves_every_sessions_room() -> None:
    async def main() -> tuple[list[str], list[str], str]:
        first, second = LocalRoom("room-a"), LocalRoom("room-b")
        server = LocalRoomServer(first)
        await server.start()
        assert server.add_room(second) == server.url_template.replace("{roomId}", "room-b")
        client = LocalRoomClient(server.url_for("room-b"), "avatar", lambda: AGENT)
        try:
            await client.connect()
            refused = ""
            stranger = LocalRoomClient(server.url_for("room-c"), "avatar", lambda: AGENT)
            try:
                await stranger.connect()
            except JoinError as exc:
                refused = str(exc)
            return first.participants, second.participants, refused
        finally:
            await client.aclose()
            await server.aclose()

    in_a, in_b, refused = asyncio.run(main())
    assert (in_a, in_b) == ([], ["avatar"])
    assert "room-c" in refused
