"""`avatar-worker`: the Avatar Server's command line.

* `avatar-worker run` — in a pod: the session's settings from the `AVATAR_*` environment the
  operator writes (`avatar_sdk.workerenv.WorkerSettings`), the join token from the mounted
  Secret file, then one live session until the room ends (exit 0), or a failure (exit 1; a bad
  environment exits 2). Status goes to the operator's relay (`AVATAR_STATUS_URL`); `/healthz`
  and `/readyz` are served on `AVATAR_HEALTH_PORT` for the Pod's probes. A warm pool worker
  (`AVATAR_POOL_WORKER` set: `avatar_sdk.workerenv.PoolWorkerSettings`) prepares its renderer
  and draws a frame first, then waits for its session's assignment from the relay
  (`avatar_worker.poolclient`); released by its pool without one, it exits 0.
* `avatar-worker render --audio IN.wav --out OUT.mp4 [--image FACE.png] [--renderer NAME]
  [--report R.json]` — the no-cloud job: any audio file through the live pipeline, faster than
  real time, to H.264 + AAC MP4, with a JSON report (see `avatar_worker.offline`).
* `avatar-worker room [--host H] [--port P] [--serve]` — a local room server for clusters
  without a VideoSDK account (the chart's `localRoom`): every room id is served on one port at
  `ws://H:P/rooms/{roomId}`, with `POST /rooms/ROOM/end` to close a meeting, until SIGTERM.
  `--serve` adds the viewer page on the same port (`avatar_worker.transports.webviewer`) and
  prints `viewer: http://H:P/` on stdout.

Logs go to stderr, one line each: lowercase message, then the record's `extra` fields as
key=value.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from avatar_sdk import api, logs
from avatar_sdk.workerenv import ENV_PREFIX, CommonSettings, PoolWorkerSettings, WorkerSettings

if TYPE_CHECKING:
    from avatar_worker.health import HealthServer
    from avatar_worker.pipeline import AvatarPipeline

logger = logging.getLogger("avatar_worker")


def setup_logging(level: str = "info") -> None:
    logs.setup(level)
    # The SDK logs payloads (and the join URL, token included) at debug: keep it quiet.
    logging.getLogger("videosdk").setLevel(logging.WARNING)


def _device(requested: str | None) -> str:
    """The torch device to render on, with torch's CPU threads set for one session.

    torch sizes its thread pool from the host's cores, not the Pod's CPU request; measured on a
    2-core box, 120 portrait frames took 1.9 s on one thread and 12-28 s on two under load.
    `AVATAR_TORCH_THREADS` (default 1) sets it.
    """
    try:
        import torch
    except ImportError:
        return requested or "cpu"
    threads = max(1, int(os.environ.get("AVATAR_TORCH_THREADS", "1") or 1))
    torch.set_num_threads(threads)
    try:
        import cv2  # the portrait samples with OpenCV's remap on the CPU

        cv2.setNumThreads(threads)
    except ImportError:
        pass
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _create_renderer(name: str, config: object) -> object:
    from avatar_worker import renderers

    return renderers.create(name, config)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# run


def _read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise SystemExit(
            f"avatar-worker: cannot read the join token file {path}: {exc.strerror}"
        ) from None
    if not token:
        raise SystemExit(f"avatar-worker: the join token file {path} is empty")
    return token


class _Live:
    """What the health probes look at while the worker runs."""

    def __init__(self) -> None:
        self.pipeline: AvatarPipeline | None = None
        self.joined = False

    def last_frame_at(self) -> float | None:
        return self.pipeline.video_track.last_sent_at if self.pipeline else None


async def _start_health(port: int, live: _Live) -> HealthServer | None:
    """Up first, so the startup probe sees a live process while the model loads."""
    from avatar_worker.health import HealthServer

    if not port:
        return None
    server = HealthServer(port, joined=lambda: live.joined, last_frame_at=live.last_frame_at)
    await server.start()
    return server


async def _make_renderer(settings: CommonSettings) -> object | None:
    """The renderer of these settings; None (logged) when it cannot be made."""
    from avatar_worker.renderers.contract import RenderConfig

    config = RenderConfig(
        width=settings.video_width,
        height=settings.video_height,
        fps=settings.video_fps,
        sample_rate=settings.audio_sample_rate,
        device=_device(None),
        image=settings.image,
        model_path=settings.model_path,
    )
    try:
        return await asyncio.to_thread(_create_renderer, settings.renderer.value, config)
    except (LookupError, ValueError) as exc:  # unknown renderer, bad image/model/metadata
        logger.error("cannot create the renderer", extra={"error": str(exc)})
        return None


def _draw_first_frame(renderer: object) -> None:
    """A warm worker draws one frame before it says it is ready: models loaded, kernels
    compiled, the CUDA context made where there is a GPU."""
    import numpy as np

    from avatar_worker.renderers.contract import FrameRenderer

    if isinstance(renderer, FrameRenderer):
        silence = np.zeros((1, renderer.config.samples_per_frame), dtype=np.float32)
        renderer.render(silence)
        renderer.reset()


def _import_the_session(transport: str) -> None:
    """A warm worker imports what serving a session needs before it says it is ready, so
    that nothing is loaded after its claim (PyAV, the transport, the pipeline)."""
    import importlib

    for module in (
        "avatar_worker.status",
        "avatar_worker.pipeline",
        "avatar_worker.session",
        "avatar_worker.transports.base",
        "avatar_worker.transports.videosdk"
        if transport == "videosdk"
        else "avatar_worker.transports.roomclient",
    ):
        try:
            importlib.import_module(module)
        except ImportError as exc:  # said again, and fatally, when the session needs it
            logger.warning("cannot load ahead", extra={"module": module, "error": str(exc)})


def _close(renderer: object) -> None:
    close = getattr(renderer, "close", None)
    if callable(close):
        close()


async def _run(settings: WorkerSettings) -> int:
    live = _Live()
    health_server = await _start_health(settings.health_port, live)
    renderer = await _make_renderer(settings)
    if renderer is None:
        if health_server is not None:
            await health_server.aclose()
        return 1
    return await _serve(settings, renderer, health_server, live, stop=_stop_on_signals())


async def _run_pool(pool: PoolWorkerSettings) -> int:
    """A warm worker: prepare the renderer, say ready, wait for a session, then serve it."""
    from avatar_worker.poolclient import AssignmentError, PoolClient

    stop = _stop_on_signals()
    live = _Live()
    health_server = await _start_health(pool.health_port, live)
    renderer = await _make_renderer(pool)
    if renderer is None:
        if health_server is not None:
            await health_server.aclose()
        return 1
    given = None
    failed = False
    try:
        started = time.monotonic()
        await asyncio.to_thread(_draw_first_frame, renderer)
        await asyncio.to_thread(_import_the_session, pool.transport)
        logger.info(
            "warm worker ready",
            extra={"pool": pool.pool_name, "prepared_s": round(time.monotonic() - started, 3)},
        )
        if not pool.status_url:
            raise AssignmentError("AVATAR_STATUS_URL (the operator's relay) is required")
        client = PoolClient(
            pool.status_url,
            namespace=pool.pool_namespace,
            worker=pool.pool_worker,
            token_file=pool.pool_token_file,
            ca_file=pool.status_ca_file,
        )
        given = await client.wait(stop)
    except AssignmentError as exc:
        logger.error("no assignment", extra={"error": str(exc)})
        failed = True
    if given is None:  # released by its pool, stopped, or it can never be assigned
        _close(renderer)
        if health_server is not None:
            await health_server.aclose()
        return 1 if failed else 0
    settings = pool.assigned(given)
    logger.info(
        "claimed",
        extra={
            "session": f"{settings.session_namespace}/{settings.session_name}",
            "room_id": settings.room_id,
        },
    )
    return await _serve(
        settings,
        renderer,
        health_server,
        live,
        stop=stop,
        join_token=given.join_token.get_secret_value(),
        status_token=given.status_token.get_secret_value(),
    )


async def _serve(
    settings: WorkerSettings,
    renderer: object,
    health_server: HealthServer | None,
    live: _Live,
    *,
    stop: asyncio.Event,
    join_token: str | None = None,
    status_token: str | None = None,
) -> int:
    """One session on a renderer that is ready: join, play, report, until the room ends.
    The tokens come from the session's Secret files, or (a warm worker) from its assignment."""
    from avatar_worker import status
    from avatar_worker.pipeline import AvatarPipeline, PipelineConfig
    from avatar_worker.session import run_session
    from avatar_worker.transports.base import JoinError, Transport

    pipeline = live.pipeline = AvatarPipeline(
        renderer,  # type: ignore[arg-type]
        config=PipelineConfig(
            sample_rate=settings.audio_sample_rate,
            channels=settings.audio_channels,
            width=settings.video_width,
            height=settings.video_height,
            fps=settings.video_fps,
        ),
        agent_participant_id=settings.agent_participant_id,
    )
    receiver = pipeline.receiver

    def agent_id() -> str | None:
        return receiver.agent_participant_id

    def on_joined() -> None:
        live.joined = True

    transport: Transport
    if settings.transport == "videosdk":
        from avatar_worker.transports.videosdk import VideoSDKTransport

        transport = VideoSDKTransport(
            room_id=settings.room_id,
            participant_id=settings.participant_id,
            token=join_token if join_token is not None else _read_token(settings.token_file),
            agent_id=agent_id,
            signaling_base_url=settings.signaling_base_url,
        )
    else:
        from avatar_worker.transports.roomclient import LocalRoomClient

        if not settings.local_room_url:
            raise SystemExit(
                "avatar-worker: AVATAR_LOCAL_ROOM_URL is required with transport local"
            )
        transport = LocalRoomClient(settings.local_room_url, settings.participant_id, agent_id)

    reporter = None
    if settings.status_reporting == "api":
        kube = (
            status.KubeApi.for_relay(
                settings.status_url,
                None if status_token is not None else settings.status_token_file,
                settings.status_ca_file,
                token=status_token,
            )
            if settings.status_url
            else status.KubeApi.from_env(os.environ)
        )
        if kube is None:
            logger.warning("no status endpoint configured, status is not reported")
        else:
            reporter = status.StatusReporter(
                kube, namespace=settings.session_namespace, name=settings.session_name
            )

    code = 1
    try:
        reason = await run_session(
            pipeline,
            transport,
            participant_id=settings.participant_id,
            reporter=reporter,
            # The operator enforces the idle timeout from the reported lastActivityAt; the
            # worker does it itself only when nobody reads its reports.
            idle_timeout=0.0 if reporter is not None else float(settings.idle_timeout_seconds),
            stop=stop,
            on_joined=on_joined,
        )
        code = 0 if reason is None or reason != api.EndReason.ERROR else 1
    except JoinError:
        code = 1
    finally:
        _close(renderer)
        if health_server is not None:
            await health_server.aclose()
        _exit_with_on_sigterm(code)
    return code


def _exit_with_on_sigterm(code: int) -> None:
    """The session is over and reported: a SIGTERM from here on (the kubelet deleting the
    finished Pod while this process still tears down: torch, threads) ends the process with
    the session's own exit code instead of 143. The loop's handler is taken off first, or the
    loop would put the default action back when it closes."""
    with contextlib.suppress(RuntimeError, NotImplementedError):
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(code))


def cmd_run(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    if args.health_port is not None:
        environ["AVATAR_HEALTH_PORT"] = str(args.health_port)
    pooled = bool(environ.get(f"{ENV_PREFIX}POOL_WORKER"))
    try:
        settings: CommonSettings = (
            PoolWorkerSettings.from_env(environ) if pooled else WorkerSettings.from_env(environ)
        )
    except ValueError as exc:
        sys.stderr.write(f"avatar-worker: bad environment: {exc}\n")
        return 2
    setup_logging(settings.log_level)
    if isinstance(settings, PoolWorkerSettings):
        logger.info(
            "warm worker starting",
            extra={
                "pool": f"{settings.pool_namespace}/{settings.pool_name}",
                "worker": settings.pool_worker,
                "transport": settings.transport,
                "renderer": settings.renderer.value,
            },
        )
        return asyncio.run(_run_pool(settings))
    assert isinstance(settings, WorkerSettings)
    logger.info(
        "worker starting",
        extra={
            "session": f"{settings.session_namespace}/{settings.session_name}",
            "room_id": settings.room_id,
            "transport": settings.transport,
            "renderer": settings.renderer.value,
        },
    )
    return asyncio.run(_run(settings))


# ---------------------------------------------------------------------------------------------
# render


def cmd_render(args: argparse.Namespace) -> int:
    from avatar_worker import offline, renderers
    from avatar_worker.pipeline import PipelineConfig
    from avatar_worker.renderers.contract import RenderConfig

    setup_logging("warning" if not args.verbose else "info")
    config = PipelineConfig(
        sample_rate=args.sample_rate,
        channels=args.channels,
        width=args.width,
        height=args.height,
        fps=args.fps,
    )
    render_config = RenderConfig(
        width=args.width,
        height=args.height,
        fps=args.fps,
        sample_rate=args.sample_rate,
        device=_device(args.device),
        seed=args.seed,
        image=args.image,
        model_path=args.model,
    )
    try:
        renderer = renderers.create(args.renderer, render_config)
    except (renderers.UnknownRendererError, ValueError) as exc:  # bad image, model, metadata
        sys.stderr.write(f"avatar-worker: {exc}\n")
        return 2
    try:
        report = offline.render_file(args.audio, args.out, renderer, config, framed=args.framed)
    except offline.AudioFileError as exc:
        sys.stderr.write(f"avatar-worker: {exc}\n")
        return 2
    finally:
        renderer.close()
    text = json.dumps(report.to_json())
    if args.report:
        Path(args.report).write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


# ---------------------------------------------------------------------------------------------
# room


def _stop_on_signals() -> asyncio.Event:
    """An event SIGTERM (the kubelet stopping the Pod) or SIGINT sets."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    return stop


async def _serve_room(args: argparse.Namespace) -> int:
    from avatar_worker.transports.localroom import LinkConditions
    from avatar_worker.transports.roomserver import LocalRoomServer

    conditions = LinkConditions(latency=args.latency, jitter=args.jitter, loss=args.loss)
    server = LocalRoomServer(host=args.host, port=args.port, open_rooms=True, conditions=conditions)
    viewer = None
    if args.serve:
        from avatar_worker.transports.webviewer import WebViewer

        wav_dir = args.wav_dir if args.wav_dir is not None else Path("examples")
        viewer = WebViewer(server, agent_id=args.agent, wav_dir=wav_dir)
        if args.host not in ("127.0.0.1", "::1", "localhost"):
            # the page has no authentication: whoever reaches it speaks as the agent
            logger.warning("the viewer page is served beyond loopback", extra={"host": args.host})
    stop = _stop_on_signals()
    try:
        await server.start()
    except OSError as exc:
        logger.error(
            "cannot listen", extra={"host": args.host, "port": args.port, "error": str(exc)}
        )
        return 1
    logger.info("local room server listening", extra={"url_template": server.url_template})
    if viewer is not None:
        sys.stdout.write(f"viewer: {viewer.url}\n")
        sys.stdout.flush()
    await stop.wait()
    logger.info("local room server stopping", extra={"rooms": len(server.rooms)})
    if viewer is not None:
        await viewer.aclose()
    await server.aclose()
    return 0


def cmd_room(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    return asyncio.run(_serve_room(args))


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatar-worker",
        description="The Avatar Server: a lip-synced avatar for a voice agent.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one live session (settings from AVATAR_* env)")
    run.add_argument(
        "--health-port",
        type=int,
        help="overrides AVATAR_HEALTH_PORT; 0 serves no probes (workers run as local processes "
        "share one network, where pods have one each)",
    )
    run.set_defaults(func=cmd_run)

    render = commands.add_parser(
        "render", help="render an audio file to MP4 through the live pipeline, offline"
    )
    render.add_argument("--audio", required=True, help="input audio (WAV; any rate, mono/stereo)")
    render.add_argument("--out", required=True, help="output MP4 (H.264 + AAC)")
    render.add_argument("--image", help="reference portrait (portrait renderer)")
    render.add_argument("--renderer", default=api.Renderer.PORTRAIT.value, help="renderer name")
    render.add_argument("--model", help="model path (model renderer)")
    render.add_argument("--report", help="write the JSON report here too")
    render.add_argument("--width", type=int, default=api.DEFAULT_WIDTH)
    render.add_argument("--height", type=int, default=api.DEFAULT_HEIGHT)
    render.add_argument("--fps", type=int, default=api.DEFAULT_FPS)
    render.add_argument(
        "--sample-rate",
        type=int,
        default=api.DEFAULT_SAMPLE_RATE,
        choices=api.SUPPORTED_SAMPLE_RATES,
        help="the session's audio rate (the input is resampled to it)",
    )
    render.add_argument("--channels", type=int, default=1, choices=(1, 2))
    render.add_argument("--framed", action="store_true", help="send framed audio, not stock PCM")
    render.add_argument("--device", help="torch device (default: cuda when available)")
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("-v", "--verbose", action="store_true")
    render.set_defaults(func=cmd_render)

    room = commands.add_parser(
        "room", help="serve local rooms over websockets (a cluster without VideoSDK)"
    )
    room.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    room.add_argument("--port", type=int, default=8765, help="port to listen on (0: any free)")
    room.add_argument("--latency", type=float, default=0.0, help="one-way delay, seconds")
    room.add_argument("--jitter", type=float, default=0.0, help="extra unreliable delay, seconds")
    room.add_argument("--loss", type=float, default=0.0, help="unreliable message loss, 0..1")
    room.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    room.add_argument(
        "--serve",
        action="store_true",
        help="also serve the viewer page (watch, hear and talk to the avatar in a browser)",
    )
    room.add_argument(
        "--wav-dir",
        type=Path,
        help="WAVs the viewer page can speak (default: ./examples when it exists)",
    )
    room.add_argument(
        "--agent",
        default="agent",
        help="the agent participant the viewer page speaks as (the session's agentParticipantId)",
    )
    room.set_defaults(func=cmd_room)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
