"""load_detector_weights: official-format files load strictly as they are (R50 / R101 / Swin-B), our checkpoints,
fine-tuning with another class count, and refusals (missing / unexpected keys, NaN, code in a pickle)."""

from __future__ import annotations

import logging
import math
import os
import pickle

import numpy as np
import pytest
import torch

from backbones.pretrained import UnsafeWeightsFileError
from tasks.detect.config import DetectConfig
from tasks.detect.convert_official import to_official_key
from tasks.detect.model import build_detector
from tasks.detect.weights import WeightsLoadError, load_detector_weights
from tests.tasks.detect.model_helpers import tiny_config, tiny_model


def official_schedule(T: int = 1000) -> dict[str, torch.Tensor]:
    """The official detector's schedule buffers (cosine, s = 0.008, betas clipped at 0.999, float64)."""
    x = torch.linspace(0, T, T + 1, dtype=torch.float64)
    f = torch.cos(((x / T) + 0.008) / 1.008 * math.pi * 0.5) ** 2
    f = f / f[0]
    betas = (1 - f[1:] / f[:-1]).clamp(0, 0.999)
    abar = torch.cumprod(1 - betas, 0)
    return {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]]),
        "sqrt_alphas_cumprod": abar.sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / abar - 1).sqrt(),
        "posterior_variance": betas.clone(),
    }


def official_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict under detectron2 / official names, plus the buffers the official files also carry."""
    state = {to_official_key(k): v.detach().clone() for k, v in model.state_dict().items()}
    for key in list(state):  # the official Swin keeps its relative_position_index buffers
        if key.endswith("attn.relative_position_bias_table"):
            state[key.replace("relative_position_bias_table", "relative_position_index")] = (
                torch.zeros(49, 49, dtype=torch.long)
            )
    return {**state, **official_schedule()}


def backbone_config(name: str) -> DetectConfig:
    cfg = tiny_config(num_stages=1)
    cfg.model.backbone.name = name
    return cfg


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "swin_b"])
def test_official_format_loads_strictly_without_conversion(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = build_detector(backbone_config(name))
    official = official_state(model)
    assert "backbone.fpn_lateral2.weight" in official and "alphas_cumprod" in official
    assert not any(k.startswith("backbone.fpn.") for k in official)
    if name == "swin_b":
        assert "backbone.bottom_up.layers.0.blocks.0.attn.qkv.weight" in official
    path = tmp_path / "diffdet_official.pth"
    torch.save({"model": official, "iteration": 449999}, path)
    del official
    with torch.no_grad():
        expected = {k: v.clone() for k, v in model.state_dict().items()}
        for p in model.parameters():
            p.zero_()
    loaded = load_detector_weights(model, path)
    assert loaded.format == "official" and loaded.source == "model" and loaded.reinitialised == []
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def _write_pkl(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_detectron2_pkl_of_numpy_arrays_loads(tmp_path) -> None:
    model = tiny_model(seed=1)
    arrays = {k: v.numpy() for k, v in official_state(model).items()}
    _write_pkl(
        tmp_path / "model.pkl",
        {"model": arrays, "__author__": "detectron2", "matching_heuristics": True},
    )
    fresh = tiny_model(seed=2)
    assert load_detector_weights(fresh, tmp_path / "model.pkl").format == "official"
    for (key, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), key


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_code_in_a_weights_file_is_refused_not_run(suffix: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"evil{suffix}"
    payload = {"model": {"head.x": np.zeros(2)}, "meta": _RunsCode()}
    if suffix == ".pkl":
        _write_pkl(path, payload)
    else:
        torch.save(payload, path)
    with pytest.raises(UnsafeWeightsFileError, match=f"evil\\{suffix}.*refusing to load"):
        load_detector_weights(tiny_model(), path)
    assert not (tmp_path / "pwned").exists()


def test_missing_and_unexpected_keys_are_listed(tmp_path) -> None:
    model = tiny_model()
    official = official_state(model)
    del official["backbone.fpn_output3.bias"]
    official["head.extra_layer.weight"] = torch.zeros(3)
    torch.save({"model": official}, tmp_path / "w.pth")
    with pytest.raises(WeightsLoadError) as err:
        load_detector_weights(tiny_model(), tmp_path / "w.pth")
    msg = str(err.value)
    assert "w.pth" in msg and "missing keys (1): backbone.fpn.layer_blocks.1.0.bias" in msg
    assert "unexpected keys (1): head.extra_layer.weight" in msg


def test_wrong_schedule_in_an_official_file_is_refused(tmp_path) -> None:
    official = official_state(tiny_model())
    official["alphas_cumprod"] = official_schedule(500)["alphas_cumprod"]
    torch.save({"model": official}, tmp_path / "w.pth")
    with pytest.raises(WeightsLoadError, match="diffusion schedule"):
        load_detector_weights(tiny_model(), tmp_path / "w.pth")


def test_nan_weights_are_refused_naming_the_tensor(tmp_path) -> None:
    state = tiny_model().state_dict()
    state["head.head_series.0.bboxes_delta.weight"][0, 0] = float("nan")
    torch.save({"model": state}, tmp_path / "nan.pt")
    with pytest.raises(
        WeightsLoadError, match=r"nan\.pt.*NaN/Inf.*head\.head_series\.0\.bboxes_delta\.weight"
    ):
        load_detector_weights(tiny_model(), tmp_path / "nan.pt")


def test_fine_tuning_with_another_class_count(tmp_path, caplog) -> None:
    source = tiny_model(seed=1, num_classes=3)
    torch.save({"model": source.state_dict(), "ema": None}, tmp_path / "model_final.pt")
    target = tiny_model(seed=2, num_classes=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightsLoadError, match="allow_class_change=True"):
        load_detector_weights(target, tmp_path / "model_final.pt")
    with caplog.at_level(logging.WARNING, logger="tasks.detect.weights"):
        loaded = load_detector_weights(target, tmp_path / "model_final.pt", allow_class_change=True)
    assert "the file has 3 classes, the model 5" in caplog.text
    assert loaded.reinitialised == [
        f"head.head_series.{i}.class_logits.{p}" for i in (0, 1) for p in ("bias", "weight")
    ]
    for key, value in target.state_dict().items():
        expected = before[key] if key in loaded.reinitialised else source.state_dict()[key]
        assert torch.equal(value, expected), key


def test_our_checkpoint_prefers_ema_and_returns_label_map(tmp_path) -> None:
    model, ema = tiny_model(seed=1), tiny_model(seed=3)
    label_map = {"category_ids": [7, 9, 11], "names": ["cat", "dog", "cow"]}
    torch.save(
        {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "config": {"seed": 1},
            "extra": {"label_map": label_map},
        },
        tmp_path / "ckpt.pt",
    )
    fresh = tiny_model(seed=2)
    loaded = load_detector_weights(fresh, tmp_path / "ckpt.pt")
    assert (loaded.format, loaded.source, loaded.config) == ("ours", "ema", {"seed": 1})
    assert loaded.label_map == label_map and loaded.class_names == ["cat", "dog", "cow"]
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), ema.state_dict().values())
    )
    assert load_detector_weights(fresh, tmp_path / "ckpt.pt", use_ema=False).source == "model"
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values())
    )


def test_from_config_loads_an_official_file(tmp_path) -> None:
    from tasks.common.config import save_config
    from tasks.detect import DiffusionDetector

    cfg = tiny_config()
    save_config(cfg, tmp_path / "cfg.yaml")
    model = tiny_model(seed=4)
    torch.save({"model": official_state(model)}, tmp_path / "official.pth")
    det = DiffusionDetector.from_config(tmp_path / "cfg.yaml", weights=tmp_path / "official.pth")
    for (key, a), b in zip(model.state_dict().items(), det.model.state_dict().values()):
        assert torch.equal(a, b), key


def test_unreadable_and_missing_files_are_named(tmp_path) -> None:
    (tmp_path / "broken.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="broken.pth"):
        load_detector_weights(tiny_model(), tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="nowhere.pth.*does not exist"):
        load_detector_weights(tiny_model(), tmp_path / "nowhere.pth")
