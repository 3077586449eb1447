"""Renderer throughput: frames per second for one session's stream, printed as one JSON object.

    python bench/renderers.py [--size 512] [--seconds 2] [--renderer portrait ...] [--no-cuda]

Each figure is `render()` end to end — audio windows in, host uint8 RGB frames out, the form the
video track sends — for syllable-like audio, so the mouth really moves. `ms_per_frame_*` are
per call divided by the batch; `threads` is torch's intra-op thread count (the worker renders
on one). On CPU: portrait at batch 1 and 8 on one thread and on every core, waveform, and the
model renderer with a small convolutional net (the plumbing's cost, not a real lip-sync
network's). When CUDA is present the same renderers run on the GPU (batch 1 and 128), with
their VRAM, a sessions-per-GPU estimate, and the device→host copy figures of TOOLCHAIN.md
(fresh `.cpu()`, preallocated pageable, pinned, and a warp overlapped with pinned copies).
`fps` is the median call, `fps_best` the fastest (what the code does when it has the core to
itself), `cpu_ms_per_frame` the process's CPU time per frame (what a frame costs, whoever else
runs on the machine); the one-minute load average is printed too, since a shared machine moves
the wall-clock figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatar_worker.renderers import base, create, gpu

SAMPLE_RATE, FPS = 24_000, 30
SPF = SAMPLE_RATE // FPS
SESSION_FPS = 30


def speech_like(frames: int, seed: int = 0) -> np.ndarray:
    """Syllables (voiced bursts through two formant peaks) and gaps: the mouth moves."""
    rng = np.random.default_rng(seed)
    n = frames * SPF
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    pos = 0
    while pos < n:
        end = min(n, pos + int(rng.uniform(0.12, 0.26) * SAMPLE_RATE))
        f0, f1 = rng.uniform(110, 220), rng.uniform(300, 850)
        seg = t[pos:end]
        tone = sum(
            np.exp(-(((k * f0 - f1) / 200) ** 2)) * np.sin(2 * np.pi * k * f0 * seg)
            for k in range(1, 20)
        )
        out[pos:end] = 0.3 * tone * np.sin(np.pi * np.linspace(0, 1, end - pos))
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
    renderer: base.FrameRenderer, batch: int, seconds: float, device: torch.device
) -> dict[str, Any]:
    audio = speech_like(max(batch, 90))
    calls: list[float] = []
    renderer.render(audio[:batch])  # warm up: allocations, first-call costs
    cpu_start = time.process_time()
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds or len(calls) < 5:
        a = (i * batch) % (len(audio) - batch + 1)
        t0 = time.perf_counter()
        renderer.render(audio[a : a + batch])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        calls.append(time.perf_counter() - t0)
        i += 1
    cpu_ms = (time.process_time() - cpu_start) / (batch * len(calls)) * 1000.0
    per_frame = np.asarray(calls) / batch * 1000.0
    return {
        "batch": batch,
        "threads": torch.get_num_threads(),
        "fps": round(1000.0 / float(np.median(per_frame)), 1),
        "fps_best": round(1000.0 / float(np.min(per_frame)), 1),
        # CPU time actually spent per frame (all threads): what a frame costs, however busy
        # the machine; 1000 / it is frames per second per core.
        "cpu_ms_per_frame": round(cpu_ms, 3),
        "ms_per_frame_p50": round(float(np.median(per_frame)), 3),
        "ms_per_frame_p99": round(float(np.percentile(per_frame, 99)), 3),
        "frames": batch * len(calls),
    }


def run_cpu(names: list[str], size: int, seconds: float, model_path: str) -> list[dict[str, Any]]:
    cores = os.cpu_count() or 1
    plan: list[tuple[str, int, int]] = []
    for name in names:
        if name == "portrait":
            plan += [("portrait", 1, 1), ("portrait", 8, 1), ("portrait", 8, cores)]
        else:
            plan.append((name, 8, 1))
    results = []
    device = torch.device("cpu")
    for name, batch, threads in plan:
        torch.set_num_threads(threads)
        config = base.RenderConfig(size, size, FPS, SAMPLE_RATE, "cpu", 0, None, model_path)
        renderer = create(name, config)
        results.append(
            {"renderer": name, "device": "cpu", **measure(renderer, batch, seconds, device)}
        )
        renderer.close()
    torch.set_num_threads(1)
    return results


def copy_figures(size: int, device: torch.device, seconds: float) -> dict[str, float]:
    """Device→host frames/s for 512×512 RGB: the four ways TOOLCHAIN.md measured."""
    n = 256
    frames = torch.randint(0, 255, (n, size, size, 3), dtype=torch.uint8, device=device)
    pageable = torch.empty(frames.shape, dtype=torch.uint8)
    pinned = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)

    def rate(step: Any) -> float:
        step()
        torch.cuda.synchronize(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 4:
            step()
            torch.cuda.synchronize(device)
            count += n
        return round(count / (time.perf_counter() - start), 1)

    src = frames.permute(0, 3, 1, 2).float()
    grid = torch.rand(n, size, size, 2, device=device) * 0.01 + torch.stack(
        torch.meshgrid(
            torch.linspace(-1, 1, size, device=device),
            torch.linspace(-1, 1, size, device=device),
            indexing="xy",
        ),
        dim=-1,
    )
    chunk = 64
    downloader = gpu.Downloader(device, (size, size, 3), chunk)

    def warp(a: int, b: int) -> torch.Tensor:
        out = torch.nn.functional.grid_sample(src[a:b], grid[a:b], align_corners=False)
        return out.to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def overlapped() -> None:
        downloader.run(n, warp, lambda a, b, pixels: None)

    return {
        "fresh_cpu_tensor_fps": rate(lambda: frames.cpu()),
        "preallocated_pageable_fps": rate(lambda: pageable.copy_(frames)),
        "pinned_fps": rate(lambda: pinned.copy_(frames, non_blocking=True)),
        "warp_overlapped_with_pinned_copies_fps": rate(overlapped),
    }


def run_cuda(names: list[str], size: int, seconds: float, model_path: str) -> dict[str, Any] | None:
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    total_mib = props.total_memory // 2**20
    results = []
    for name in names:
        if name == "waveform":  # CPU only by design
            continue
        for batch in (1, 128):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            config = base.RenderConfig(size, size, FPS, SAMPLE_RATE, "cuda", 0, None, model_path)
            renderer = create(name, config)
            row = {
                "renderer": name,
                "device": props.name,
                **measure(renderer, batch, seconds, device),
            }
            vram = renderer.vram_used_mib or 0
            row["vram_mib"] = vram
            by_vram = math.floor(0.9 * total_mib / vram) if vram else None
            by_rate = math.floor(row["fps"] / SESSION_FPS)
            row["sessions_per_gpu_estimate"] = min(v for v in (by_vram, by_rate) if v is not None)
            results.append(row)
            renderer.close()
    return {
        "device": props.name,
        "total_mib": total_mib,
        "cuda_context_mib_assumed": gpu.CUDA_CONTEXT_MIB,
        "results": results,
        "copies_512": copy_figures(size, device, seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--renderer", action="append", choices=["portrait", "waveform", "model"])
    parser.add_argument("--no-cuda", action="store_true")
    args = parser.parse_args()
    names = args.renderer or ["portrait", "waveform", "model"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = tiny_model(Path(tmp))
        cpu = run_cpu(names, args.size, args.seconds, model_path)
        cuda = None if args.no_cuda else run_cuda(names, args.size, args.seconds, model_path)
    report = {
        "bench": "renderers",
        "size": args.size,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),  # other work sharing the CPUs
        "torch": torch.__version__,
        "cpu": cpu,
        "cuda": cuda,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
