"""The plug-in point for real lip-sync networks (MuseTalk / Wav2Lip class): a user's model.

`spec.avatar.modelPath` (CLI `--model`) names one of:

- a TorchScript file (`torch.jit.script(model).save(path)` or `torch.jit.trace`);
- a `torch.export` archive (`.pt2`, `torch.export.save(torch.export.export(model, args,
  dynamic_shapes=...), path)`), exported with a dynamic batch dimension — TorchScript is
  deprecated as of torch 2.13, export is its successor; or
- a manifest, `avatar-model.json` (the file, or a directory holding it), for a plain
  `nn.Module` plus weights::

      {"module": "my_package.net:build",       # import path of a class or factory
       "kwargs": {"channels": 32},              # passed to it (optional)
       "weights": "weights.pt",                 # a state dict, relative to the manifest
       "audio_context_frames": 5,               # optional, see below
       "max_batch": 32}                         # optional, see below

  or `{"model": "net.pt2", "audio_context_frames": 5}`: a TorchScript or exported file plus
  the settings that an exported program cannot carry itself.

  The manifest's directory goes on `sys.path` first, so the code can ship beside the weights
  on the mounted volume. Weights load with `torch.load(weights_only=True)` (tensors only, no
  pickled code), or from `.safetensors` when the `safetensors` package is installed.

The contract, checked by a dry run when the renderer starts:

    forward(audio: Tensor[B, T], reference: Tensor[B, 3, H, W]) -> Tensor[B, 3, H, W]

- `audio`: float32 mono in [-1, 1], one row per video frame. T = samples_per_frame × C, where
  C is `audio_context_frames` (the manifest's key, else the module's integer attribute of that
  name, else 1; an exported program keeps no attributes, so use a manifest): the frame's
  own window preceded by the C − 1 windows before it (zeros at the start and after `reset()`),
  so a network that wants context (Wav2Lip looks at ~0.2 s) gets it without buffering itself.
- `reference`: the avatar image (`spec.avatar.image`, else the built-in portrait), fitted to
  the session's frame size exactly as the portrait renderer fits it, RGB float32 in [0, 1].
- output: RGB in [0, 1] (values outside are clamped), same B, H and W.
- batch: B is at most `max_batch` (manifest, else module attribute, else 16 on CPU and 64 on
  CUDA); the renderer splits longer runs.
- device and dtype: module and inputs live on the session's device; inputs are cast to the
  dtype of the module's first floating-point parameter (float32 if it has none), so a
  half-precision model gets half-precision inputs.

VRAM is measured after the dry run (the allocator's peak plus the CUDA context) and reported
through `vram_used_mib`. Frames leave the GPU through `gpu.Downloader` (pinned buffers, copies
overlapped with the next batch).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import pathlib
import sys
import zipfile
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from avatar_worker import renderers
from avatar_worker.renderers import contract, faces, gpu

MANIFEST = "avatar-model.json"
CONTRACT = (
    "forward(audio: Tensor[B, samples_per_frame × audio_context_frames], "
    "reference: Tensor[B, 3, H, W]) -> Tensor[B, 3, H, W], values in [0, 1]"
)


# torch.jit.load carries no annotations; this name gives it its type.
_jit_load: Callable[..., torch.nn.Module] = torch.jit.load
_export_load: Callable[[str], torch.export.ExportedProgram] = torch.export.load


class ModelContractError(ValueError):
    """The user's model does not load, or does not honour the renderer's contract."""


def _is_torchscript(path: pathlib.Path) -> bool:
    """TorchScript archives carry their code; `torch.save` checkpoints do not."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _load_state_dict(path: pathlib.Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ModelContractError(
                f"{str(path)!r} is a safetensors file but the safetensors package is not "
                "installed in this worker; save a state dict with torch.save instead"
            ) from e
        return dict(load_file(str(path)))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad checkpoint
        raise ModelContractError(f"cannot load weights {str(path)!r}: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelContractError(f"weights {str(path)!r} are not a state dict of tensors")
    return state


class LoadedModel(NamedTuple):
    module: torch.nn.Module
    options: dict[str, Any]  # the manifest's optional settings (audio_context_frames, max_batch)


def _from_manifest(path: pathlib.Path) -> LoadedModel:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelContractError(f"model manifest {str(path)!r} is not readable JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise ModelContractError(f"model manifest {str(path)!r} must be a JSON object")
    options = {k: manifest[k] for k in ("audio_context_frames", "max_batch") if k in manifest}
    if isinstance(manifest.get("model"), str):  # a TorchScript or exported file + settings
        return LoadedModel(_load_file(path.parent / manifest["model"]), options)
    if not isinstance(manifest.get("module"), str):
        raise ModelContractError(
            f'model manifest {str(path)!r} needs "module": "package.module:factory" '
            '(with "weights"), or "model": "file.pt2"'
        )
    module_name, _, attr = manifest["module"].partition(":")
    if not attr:
        raise ModelContractError(
            f'model manifest {str(path)!r}: "module" must look like package.module:factory, '
            f"got {manifest['module']!r}"
        )
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ModelContractError(f"cannot import {manifest['module']!r}: {e}") from e
    kwargs: Any = manifest.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ModelContractError(f'model manifest {str(path)!r}: "kwargs" must be an object')
    model = factory(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise ModelContractError(
            f"{manifest['module']!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    if "weights" in manifest:
        weights = path.parent / str(manifest["weights"])
        if not weights.is_file():
            raise faces.AvatarAssetError(f"model weights {str(weights)!r} do not exist")
        try:
            model.load_state_dict(_load_state_dict(weights), strict=True)
        except RuntimeError as e:
            raise ModelContractError(
                f"weights {str(weights)!r} do not fit {manifest['module']!r}: {e}"
            ) from e
    return LoadedModel(model, options)


def _load_file(path: pathlib.Path) -> torch.nn.Module:
    """A TorchScript or torch.export archive, on the CPU (the caller moves it)."""
    if not path.is_file():
        raise faces.AvatarAssetError(f"model file {str(path)!r} does not exist")
    if path.suffix == ".pt2":
        try:
            return _export_load(str(path)).module()
        except Exception as e:  # torch raises several types for a bad archive
            raise ModelContractError(f"cannot load exported model {str(path)!r}: {e}") from e
    if _is_torchscript(path):
        try:
            return _jit_load(str(path), map_location="cpu")
        except Exception as e:  # torch raises RuntimeError and friends
            raise ModelContractError(f"cannot load TorchScript model {str(path)!r}: {e}") from e
    raise ModelContractError(
        f"{str(path)!r} is neither a TorchScript nor a torch.export (.pt2) archive; a plain "
        f"state dict needs an {MANIFEST} manifest naming the module that it belongs to"
    )


def load_module(model_path: str | None, device: torch.device) -> LoadedModel:
    """The user's model from `model_path`, on `device`, in eval mode, and its settings."""
    if not model_path:
        raise faces.AvatarAssetError(
            "the model renderer needs a model: set spec.avatar.modelPath (CLI: --model) to a "
            f"TorchScript file or an {MANIFEST} manifest"
        )
    path = pathlib.Path(model_path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise faces.AvatarAssetError(
            f"model {model_path!r} does not exist (a TorchScript file, or an {MANIFEST} "
            "manifest or a directory holding one, usually on the mounted avatar volume)"
        )
    loaded = _from_manifest(path) if path.suffix == ".json" else LoadedModel(_load_file(path), {})
    module = loaded.module.to(device)
    # An exported program's module has no train mode to leave: its eval() raises.
    with contextlib.suppress(NotImplementedError):
        module.eval()
    return LoadedModel(module, loaded.options)


def _setting(loaded: LoadedModel, name: str, default: int) -> int:
    value = loaded.options.get(name, getattr(loaded.module, name, default))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelContractError(f"model setting {name} must be a positive int, got {value!r}")
    return value


class ModelRenderer(contract.FrameRenderer):
    """Runs a user's lip-sync network (see the module's docstring for the contract)."""

    name = "model"

    def __init__(self, config: contract.RenderConfig) -> None:
        super().__init__(config)
        self.device = gpu.resolve_device(config.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        loaded = load_module(config.model_path, self.device)
        self._model = loaded.module
        self.context = _setting(loaded, "audio_context_frames", 1)
        self.max_batch = _setting(loaded, "max_batch", 64 if self.device.type == "cuda" else 16)
        self.dtype = next(
            (p.dtype for p in self._model.parameters() if p.is_floating_point()), torch.float32
        )
        image, layout = faces.load(config.image)
        frame, _ = faces.fit(image, layout, config.width, config.height)
        reference = torch.from_numpy(frame).to(self.device).permute(2, 0, 1).unsqueeze(0)
        self._reference = (reference.to(torch.float32) / 255.0).to(self.dtype)
        spf = config.samples_per_frame
        self._history = np.zeros((self.context - 1, spf), np.float32)
        self._downloader = gpu.Downloader(
            self.device, (config.height, config.width, 3), self.max_batch
        )
        self._check_contract()

    def _check_contract(self) -> None:
        """One dry run: the right signature, and a frame of the right shape back."""
        audio = torch.zeros(
            (1, self.config.samples_per_frame * self.context), dtype=self.dtype, device=self.device
        )
        try:
            with torch.inference_mode():
                out = self._model(audio, self._reference)
        except Exception as e:  # a user's model can raise anything
            raise ModelContractError(
                f"model {self.config.model_path!r} failed its dry run ({type(e).__name__}: {e}); "
                f"the renderer calls {CONTRACT}"
            ) from e
        want = (1, 3, self.config.height, self.config.width)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelContractError(
                f"model {self.config.model_path!r} returned {got} for a batch of 1, expected "
                f"{want}; the renderer calls {CONTRACT}"
            )

    def _windows(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Each frame's window preceded by its context: [N, samples × context]."""
        n, spf = audio.shape
        if self.context == 1:
            return audio
        joined = np.concatenate([self._history, audio])
        self._history = joined[-(self.context - 1) :].copy()
        rows = np.lib.stride_tricks.sliding_window_view(joined, (self.context, spf))[:, 0]
        return np.ascontiguousarray(rows.reshape(n, self.context * spf))

    def render(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        audio = np.asarray(audio, dtype=np.float32)
        spf = self.config.samples_per_frame
        if audio.ndim != 2 or audio.shape[1] != spf:
            raise ValueError(f"audio must be [frames, {spf}], got shape {audio.shape}")
        n = audio.shape[0]
        frames = np.empty((n, self.config.height, self.config.width, 3), np.uint8)
        windows = torch.tensor(self._windows(audio), dtype=self.dtype, device=self.device)
        want = (3, self.config.height, self.config.width)

        def draw(a: int, b: int) -> torch.Tensor:
            out = self._model(windows[a:b], self._reference.expand(b - a, -1, -1, -1))
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (b - a, *want):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ModelContractError(
                    f"model returned {got} for a batch of {b - a}; the renderer calls {CONTRACT}"
                )
            pixels = (out.float().clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
            return pixels.permute(0, 2, 3, 1).contiguous()

        def paste(a: int, b: int, pixels: torch.Tensor) -> None:
            frames[a:b] = pixels.numpy()

        with torch.inference_mode():
            self._downloader.run(n, draw, paste)
        return frames

    def reset(self) -> None:
        self._history[:] = 0.0

    @property
    def vram_used_mib(self) -> int | None:
        return gpu.vram_mib(self.device)

    def close(self) -> None:
        self._downloader.close()
        self._model = torch.nn.Identity()


renderers.register("model", ModelRenderer)
