"""Renderer throughput for one session's stream, printed as one JSON object.

    python bench/render.py [--device cpu|cuda] [--renderer NAME] [--size 512]
                           [--threads 1] [--batch 4] [--seconds 10]

What is timed is `render()` end to end, as the live pipeline calls it: audio windows in, host
uint8 RGB frames [n, size, size, 3] out — the frames the synchronizer hands on to the video
track — for syllable-like audio (voiced bursts and gaps, so the mouth really moves), `--batch`
frames per call (default: the driver's largest batch, `DEFAULT_MAX_BATCH`). Per call, the time
divided by the batch is one sample of `ms_per_frame`; `fps` is 1000 / its median, the rate of
one session's stream; p99 shows the slow calls. `threads` is torch's and OpenCV's thread count
(the worker renders on one). On CUDA, `vram_mib` is what the renderer holds (the allocator's
peak plus the process's CUDA context) and `sessions_per_gpu_estimate` the fewer of what fits
in 90 % of the card's memory and what its rate sustains at 30 fps.

`extra` holds the rest: the same stream at batch 1 (the first frame of a reply), an idle stream
(silence: head motion and blinks, what a listening avatar costs), the mean rate and the fastest
call, CPU time per frame (what a frame costs whoever else runs on the machine), the one-minute
load average and the machine — a shared machine moves the wall-clock figures, so read them as
ranges. On CUDA it adds the device→host copy rates of TOOLCHAIN.md (fresh `.cpu()` tensor,
preallocated pageable, pinned, a warp overlapped with pinned copies).

The `model` renderer runs a small convolutional net saved as TorchScript here (the plumbing's
cost, not a real lip-sync network's). Bounded: about 20 s per renderer on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from avatar_worker.renderers import contract, create, framedriver, gpu

SAMPLE_RATE, FPS = 24_000, 30
SPF = SAMPLE_RATE // FPS
SESSION_FPS = 30  # what one session needs


def speech_like(frames: int, seed: int = 0) -> np.ndarray:
    """Syllables (voiced bursts through two formant peaks) and gaps: the mouth moves."""
    rng = np.random.default_rng(seed)
    n = frames * SPF
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    pos = 0
    while pos < n:
        end = min(n, pos + int(rng.uniform(0.12, 0.26) * SAMPLE_RATE))
        f0, f1, f2 = rng.uniform(110, 220), rng.uniform(300, 850), rng.uniform(900, 2400)
        seg = t[pos:end]
        tone = sum(
            (np.exp(-(((k * f0 - f1) / 180) ** 2)) + 0.6 * np.exp(-(((k * f0 - f2) / 250) ** 2)))
            * np.sin(2 * np.pi * k * f0 * seg)
            for k in range(1, 24)
        )
        out[pos:end] = 0.3 * tone / 3.0 * np.sin(np.pi * np.linspace(0, 1, end - pos))
        pos = end + int(rng.uniform(0.08, 0.22) * SAMPLE_RATE)
    return out.astype(np.float32).reshape(frames, SPF)


def tiny_model(folder: Path) -> str:
    """A small convolutional 'lip-sync network' saved as TorchScript: the renderer's plumbing."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(8, 3, 3, padding=1),
            )

        def forward(self, audio: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
            level = audio.abs().mean(dim=1).view(-1, 1, 1, 1)
            return torch.sigmoid(self.body(reference) + level)

    path = folder / "tiny.pt"
    trace: Any = torch.jit.trace  # untyped in torch's stubs
    trace(Net(), (torch.zeros(1, SPF), torch.zeros(1, 3, 64, 64))).save(str(path))
    return str(path)


def measure(
    renderer: contract.FrameRenderer, audio: np.ndarray, batch: int, seconds: float
) -> dict[str, float]:
    """Per-frame wall and CPU time of `render()` on consecutive batches of `audio`."""
    calls: list[float] = []
    for a in range(0, min(len(audio), 4 * batch), batch):  # warm up: allocations, first calls
        renderer.render(audio[a : a + batch])
    cpu_start = time.process_time()
    start = time.perf_counter()
    a = 0
    while time.perf_counter() - start < seconds or len(calls) < 20:
        if a + batch > len(audio):
            a = 0
        t0 = time.perf_counter()
        frames = renderer.render(audio[a : a + batch])
        calls.append(time.perf_counter() - t0)
        a += batch
    elapsed = time.perf_counter() - start
    assert frames.dtype == np.uint8 and frames.shape[0] == batch and frames.shape[-1] == 3
    per_frame = np.asarray(calls) / batch * 1000.0
    count = batch * len(calls)
    return {
        "fps": round(1000.0 / float(np.median(per_frame)), 1),
        "ms_per_frame_p50": round(float(np.median(per_frame)), 3),
        "ms_per_frame_p99": round(float(np.percentile(per_frame, 99)), 3),
        "fps_mean": round(count / elapsed, 1),
        "fps_best": round(1000.0 / float(np.min(per_frame)), 1),
        # CPU time actually spent per frame (all threads): what a frame costs, however busy
        # the machine is; 1000 / it is frames per second per core.
        "cpu_ms_per_frame": round((time.process_time() - cpu_start) / count * 1000.0, 3),
        "frames": count,
    }


def copy_figures(size: int, device: torch.device, seconds: float) -> dict[str, float]:
    """Device→host frames/s for size×size RGB frames: the four ways TOOLCHAIN.md measured."""
    n = 256
    frames = torch.randint(0, 255, (n, size, size, 3), dtype=torch.uint8, device=device)
    pageable = torch.empty(frames.shape, dtype=torch.uint8)
    pinned = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)

    def rate(step: Any) -> float:
        step()
        torch.cuda.synchronize(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step()
            torch.cuda.synchronize(device)
            count += n
        return round(count / (time.perf_counter() - start), 1)

    src = frames.permute(0, 3, 1, 2).float()
    ramp = torch.linspace(-1, 1, size, device=device)
    grid = torch.stack(torch.meshgrid(ramp, ramp, indexing="xy"), dim=-1)
    grid = grid + torch.rand(n, size, size, 2, device=device) * 0.01
    downloader = gpu.Downloader(device, (size, size, 3), 64)

    def warp(a: int, b: int) -> torch.Tensor:
        out = torch.nn.functional.grid_sample(src[a:b], grid[a:b], align_corners=False)
        return out.to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    return {
        "fresh_cpu_tensor_fps": rate(lambda: frames.cpu()),
        "preallocated_pageable_fps": rate(lambda: pageable.copy_(frames)),
        "pinned_fps": rate(lambda: pinned.copy_(frames, non_blocking=True)),
        "warp_overlapped_with_pinned_copies_fps": rate(
            lambda: downloader.run(n, warp, lambda a, b, pixels: None)
        ),
    }


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--renderer", default="portrait", help="portrait, waveform or model")
    parser.add_argument("--size", type=int, default=512, help="frame width and height")
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV CPU threads")
    parser.add_argument("--batch", type=int, default=framedriver.DEFAULT_MAX_BATCH)
    parser.add_argument("--seconds", type=float, default=10.0, help="for the main figure")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("bench/render.py: --device cuda, but torch sees no CUDA device\n")
        return 2
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    with tempfile.TemporaryDirectory() as tmp:
        model_path = tiny_model(Path(tmp)) if args.renderer == "model" else None
        config = contract.RenderConfig(
            args.size, args.size, FPS, SAMPLE_RATE, args.device, 0, None, model_path
        )
        renderer = create(args.renderer, config)
        try:
            speech = speech_like(20 * FPS)
            main_figures = measure(renderer, speech, args.batch, args.seconds)
            one = measure(renderer, speech, 1, args.seconds / 3)
            renderer.reset()
            idle = measure(renderer, np.zeros((10 * FPS, SPF), np.float32), args.batch, 2.0)
            vram = renderer.vram_used_mib
        finally:
            renderer.close()

    sessions = None
    extra: dict[str, Any] = {
        "batch": args.batch,
        **{k: main_figures[k] for k in ("fps_mean", "fps_best", "cpu_ms_per_frame", "frames")},
        "batch_1": {k: one[k] for k in ("fps", "ms_per_frame_p50", "ms_per_frame_p99")},
        "idle": {k: idle[k] for k in ("fps", "ms_per_frame_p50", "ms_per_frame_p99")},
        "sessions_per_core_estimate": math.floor(main_figures["fps"] / SESSION_FPS),
        "machine": machine(),
        "load_average_1m": round(os.getloadavg()[0], 2),  # other work sharing the CPUs
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        total_mib = props.total_memory // 2**20
        by_rate = math.floor(main_figures["fps"] / SESSION_FPS)
        by_vram = math.floor(0.9 * total_mib / vram) if vram else by_rate
        sessions = min(by_rate, by_vram)
        extra.update(
            gpu=props.name,
            gpu_total_mib=total_mib,
            cuda_context_mib_assumed=gpu.CUDA_CONTEXT_MIB,
            copies=copy_figures(args.size, device, 1.0),
        )
    extra["seconds"] = round(time.perf_counter() - started, 1)
    report = {
        "renderer": args.renderer,
        "device": "cpu" if args.renderer == "waveform" else args.device,  # waveform: CPU only
        "size": args.size,
        "fps": main_figures["fps"],
        "ms_per_frame_p50": main_figures["ms_per_frame_p50"],
        "ms_per_frame_p99": main_figures["ms_per_frame_p99"],
        "threads": args.threads,
        "vram_mib": vram,
        "sessions_per_gpu_estimate": sessions,
        "extra": extra,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
