"""The model renderer: a user's network behind a documented contract, and clear errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import renderer_support as rs
import torch

from avatar_worker.renderers import contract, faces
from avatar_worker.renderers.model import ModelContractError, ModelRenderer

MakeConfig = Callable[..., contract.RenderConfig]

# TorchScript is what users ship today (and what the spec names); torch 2.13 deprecates it in
# favour of torch.export, which the renderer loads too. The deprecation is not under test.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


class LoudnessDims(torch.nn.Module):
    """Darkens the reference by the window's loudness; records what it was given."""

    def __init__(self, context: int = 1, max_batch: int = 16) -> None:
        super().__init__()
        self.audio_context_frames = context
        self.max_batch = max_batch
        self.gain = torch.nn.Parameter(torch.tensor(4.0))

    def forward(self, audio: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if audio.shape[0] > self.max_batch:
            raise ValueError("batch larger than max_batch")
        level = audio.abs().mean(dim=1).view(-1, 1, 1, 1)
        # The first pixel's red channel reports how many samples each row had, in thousands.
        out = reference * (1.0 - (self.gain * level).clamp(0.0, 1.0))
        out[:, 0, 0, 0] = audio.shape[1] / 10000.0
        return out


class Shade(torch.nn.Module):
    def forward(self, audio: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return reference * (1.0 - audio.abs().mean(dim=1).view(-1, 1, 1, 1))


class WrongShape(torch.nn.Module):
    def forward(self, audio: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return reference[:, :, ::2, ::2]


class WrongSignature(torch.nn.Module):
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return audio


def save_script(module: torch.nn.Module, path: Path) -> str:
    script: Any = torch.jit.script  # untyped in torch's stubs
    script(module).save(str(path))
    return str(path)


def test_renders_a_torchscript_model(make_config: MakeConfig, tmp_path: Path) -> None:
    path = save_script(LoudnessDims(), tmp_path / "net.pt")
    renderer = ModelRenderer(make_config(96, 64, model_path=path))
    speech = rs.speech_like(1.0, seed=1, level=0.5)
    frames = renderer.render(speech.windows)
    assert frames.shape == (30, 64, 96, 3) and frames.dtype == np.uint8
    brightness = rs.luminance(frames[:, 1:, 1:]).mean(axis=(1, 2))
    assert np.corrcoef(brightness, speech.envelope)[0, 1] < -0.8  # louder, darker
    assert renderer.vram_used_mib is None  # on the CPU


def test_context_frames_and_batch_limit_are_honoured(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    path = save_script(LoudnessDims(context=3, max_batch=4), tmp_path / "net.pt")
    renderer = ModelRenderer(make_config(32, 32, model_path=path))
    assert (renderer.context, renderer.max_batch) == (3, 4)
    frames = renderer.render(rs.silence(10))  # ten frames, in batches of at most four
    assert (frames[:, 0, 0, 0] == round(3 * rs.SPF / 10000 * 255)).all()


def test_audio_context_carries_over_between_calls_and_reset_clears_it(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    path = save_script(LoudnessDims(context=4), tmp_path / "net.pt")
    loud = rs.speech_like(0.5, seed=2, level=0.6).windows[-1:]
    loud[:] = 0.5

    def dark_after_loud(reset: bool) -> float:
        renderer = ModelRenderer(make_config(32, 32, model_path=path))
        renderer.render(loud)
        if reset:
            renderer.reset()
        return float(rs.luminance(renderer.render(rs.silence(1))[:, 1:, 1:]).mean())

    assert dark_after_loud(reset=False) < dark_after_loud(reset=True)


def test_wrong_output_shape_names_the_contract(make_config: MakeConfig, tmp_path: Path) -> None:
    path = save_script(WrongShape(), tmp_path / "net.pt")
    with pytest.raises(ModelContractError, match=r"returned \(1, 3, 16, 16\).*forward\(audio"):
        ModelRenderer(make_config(32, 32, model_path=path))


def test_wrong_signature_names_the_contract(make_config: MakeConfig, tmp_path: Path) -> None:
    path = save_script(WrongSignature(), tmp_path / "net.pt")
    with pytest.raises(ModelContractError, match=r"dry run.*forward\(audio.*reference"):
        ModelRenderer(make_config(32, 32, model_path=path))


def test_missing_model_is_a_clear_error(make_config: MakeConfig, tmp_path: Path) -> None:
    with pytest.raises(faces.AvatarAssetError, match="modelPath"):
        ModelRenderer(make_config(32, 32))
    with pytest.raises(faces.AvatarAssetError, match=r"gone\.pt.*does not exist"):
        ModelRenderer(make_config(32, 32, model_path=str(tmp_path / "gone.pt")))


def test_a_bare_state_dict_asks_for_a_manifest(make_config: MakeConfig, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(LoudnessDims().state_dict(), path)
    with pytest.raises(ModelContractError, match=r"avatar-model\.json"):
        ModelRenderer(make_config(32, 32, model_path=str(path)))


NET_SOURCE = """
import torch


class Net(torch.nn.Module):
    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.mix = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, audio, reference):
        return torch.sigmoid(self.mix(reference) + audio.abs().mean(dim=1).view(-1, 1, 1, 1))
"""


def write_manifest(folder: Path, module: str, weights: dict[str, torch.Tensor]) -> Path:
    (folder / f"{module}.py").write_text(NET_SOURCE)
    torch.save(weights, folder / "weights.pt")
    manifest = {"module": f"{module}:Net", "kwargs": {"channels": 3}, "weights": "weights.pt"}
    (folder / "avatar-model.json").write_text(json.dumps(manifest))
    return folder


def test_a_module_and_its_weights_load_from_a_manifest(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    conv = torch.nn.Conv2d(3, 3, 1)
    folder = write_manifest(
        tmp_path, "tiny_net_ok", {f"mix.{k}": v for k, v in conv.state_dict().items()}
    )
    renderer = ModelRenderer(make_config(32, 24, model_path=str(folder)))
    assert renderer.render(rs.speech_like(0.2).windows).shape == (6, 24, 32, 3)


def test_weights_that_do_not_fit_the_module_are_refused(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    folder = write_manifest(tmp_path, "tiny_net_bad", {"other.weight": torch.zeros(1)})
    with pytest.raises(ModelContractError, match="do not fit"):
        ModelRenderer(make_config(32, 32, model_path=str(folder / "avatar-model.json")))


def test_an_exported_program_loads_with_settings_from_its_manifest(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        Shade(),
        (torch.zeros(2, 2 * rs.SPF), torch.zeros(2, 3, 24, 32)),
        dynamic_shapes=({0: batch}, {0: batch}),
    )
    torch.export.save(program, str(tmp_path / "net.pt2"))
    # The exported graph checks that audio rows are 2 × 800 long: the context must be 2.
    manifest = {"model": "net.pt2", "audio_context_frames": 2, "max_batch": 3}
    (tmp_path / "avatar-model.json").write_text(json.dumps(manifest))
    renderer = ModelRenderer(make_config(32, 24, model_path=str(tmp_path)))
    assert (renderer.context, renderer.max_batch) == (2, 3)
    assert renderer.render(rs.silence(7)).shape == (7, 24, 32, 3)
