"""Official (detectron2) checkpoint keys convert to a state dict that loads strictly; the CLI reads files safely."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasks.detect.convert_official import convert_key, convert_official_state_dict, to_official_key
from tests.tasks.detect.model_helpers import tiny_config, tiny_model

REPO = Path(__file__).resolve().parents[3]


def to_official(key: str) -> str:
    """Our key -> the detectron2 DiffusionDet name (written from detectron2's FPN naming)."""
    return to_official_key(key)


def test_official_resnet_checkpoint_loads_strictly() -> None:
    model = tiny_model(seed=1)
    official = {to_official(k): v.clone() for k, v in model.state_dict().items()}
    official["alphas_cumprod"] = torch.ones(
        1000, dtype=torch.float64
    )  # schedule buffers are dropped
    official["sqrt_recipm1_alphas_cumprod"] = torch.ones(1000, dtype=torch.float64)
    assert (
        "backbone.fpn_lateral2.weight" in official
        and "head.head_series.0.self_attn.in_proj_weight" in official
    )
    fresh = tiny_model(seed=2)
    fresh.load_state_dict(convert_official_state_dict({"model": official}), strict=True)
    for (k, v), w in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(v, w), k


def test_swin_key_table() -> None:
    assert (
        convert_key("backbone.bottom_up.layers.0.downsample.reduction.weight")
        == "backbone.bottom_up.body.layers_1.downsample.reduction.weight"
    )
    assert (
        convert_key("backbone.bottom_up.layers.2.blocks.3.attn.qkv.weight")
        == "backbone.bottom_up.body.layers_2.blocks.3.attn.qkv.weight"
    )
    assert convert_key("backbone.bottom_up.layers.2.blocks.3.attn.relative_position_index") is None
    assert convert_key("backbone.bottom_up.norm3.weight") == "backbone.bottom_up.norm3.weight"


@pytest.mark.parametrize("name", ["resnet50", "swin_b"])
def test_inverse_table_round_trips_every_key(name: str) -> None:
    from tasks.detect.model import build_detector

    cfg = tiny_config(num_stages=1)
    cfg.model.backbone.name = name
    keys = list(build_detector(cfg).state_dict())
    official = [to_official_key(k) for k in keys]
    assert [convert_key(k) for k in official] == keys
    assert len(set(official)) == len(keys)
    assert not any(k.startswith("backbone.fpn.") or ".body." in k for k in official)


def test_cli_converts_without_running_code_and_without_sys_path(tmp_path) -> None:
    model = tiny_model(seed=1)
    official = {to_official(k): v.numpy() for k, v in model.state_dict().items()}
    with open(tmp_path / "official.pkl", "wb") as f:
        pickle.dump({"model": official, "__author__": "test"}, f, protocol=2)
    src = (REPO / "tasks" / "detect" / "convert_official.py").read_text()
    assert "sys.path" not in src
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tasks.detect.convert_official",
            str(tmp_path / "official.pkl"),
            str(tmp_path / "ours.pt"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    fresh = tiny_model(seed=2)
    fresh.load_state_dict(torch.load(tmp_path / "ours.pt", weights_only=True), strict=True)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values())
    )
