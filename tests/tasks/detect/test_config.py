"""Every detection config loads, holds the official recipe values, and rejects bad keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.common.config import load_config
from tasks.detect.config import DetectConfig

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "detect"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_all_expected_configs_exist():
    names = {p.name for p in CONFIGS}
    expected = {
        "diffdet_coco_r50.yaml",
        "diffdet_coco_r101.yaml",
        "diffdet_coco_swinb.yaml",
        "diffdet_lvis_r50.yaml",
        "default_synthetic.yaml",
    }
    assert expected <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    cfg = load_config(DetectConfig, path)
    assert cfg.model.head.num_proposals > 0
    assert len(cfg.test.eval_steps) >= 1


def test_official_coco_recipe():
    cfg = load_config(DetectConfig, CONFIG_DIR / "diffdet_coco_r50.yaml")
    assert (cfg.solver.base_lr, cfg.solver.batch_size, cfg.solver.weight_decay) == (
        2.5e-5,
        16,
        1e-4,
    )
    assert (cfg.solver.max_iter, cfg.solver.steps, cfg.solver.warmup_iters) == (
        450000,
        (350000, 420000),
        1000,
    )
    assert cfg.model.head.num_proposals == 500 and cfg.model.head.num_stages == 6
    assert cfg.data.min_size_train == tuple(range(480, 801, 32)) and cfg.data.crop_size == (
        384,
        600,
    )
    assert (cfg.model.backbone.norm, cfg.model.backbone.freeze_at) == ("frozen_bn", 2)
    r101 = load_config(DetectConfig, CONFIG_DIR / "diffdet_coco_r101.yaml")
    assert r101.model.backbone.name == "resnet101" and r101.solver.max_iter == 450000
    swin = load_config(DetectConfig, CONFIG_DIR / "diffdet_coco_swinb.yaml")
    assert swin.model.backbone.name == "swin_b" and swin.model.backbone.drop_path_rate == 0.3


def test_official_lvis_recipe():
    cfg = load_config(DetectConfig, CONFIG_DIR / "diffdet_lvis_r50.yaml")
    assert cfg.data.format == "lvis" and cfg.model.head.num_classes == 1203
    assert cfg.model.loss.use_fed_loss and cfg.data.repeat_factor_threshold == 0.001
    assert (cfg.solver.max_iter, cfg.solver.steps) == (270000, (210000, 250000))


def test_default_synthetic_is_small_and_evaluates_1_4_8_steps():
    cfg = load_config(DetectConfig, CONFIG_DIR / "default_synthetic.yaml")
    assert cfg.data.synthetic and cfg.model.head.num_classes == 6
    assert cfg.test.eval_steps == (1, 4, 8)
    assert cfg.model.backbone.pretrained is False  # trains offline from scratch
    spec = cfg.data.synthetic_spec  # the generator knobs reach SyntheticSpec with their types
    assert isinstance(spec.size_probs, tuple) and abs(sum(spec.size_probs) - 1.0) < 1e-9
    assert spec.max_objects >= 1 and 0.0 < spec.min_visible <= 1.0


def test_overrides_and_errors(tmp_path):
    cfg = load_config(
        DetectConfig,
        CONFIG_DIR / "diffdet_coco_r50.yaml",
        ["solver.base_lr=1e-4", "model.head.num_stages=2"],
    )
    assert cfg.solver.base_lr == 1e-4 and cfg.model.head.num_stages == 2
    with pytest.raises(ValueError, match="num_stagez"):
        load_config(DetectConfig, None, ["model.head.num_stagez=2"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("solver:\n  max_iter: lots\n")
    with pytest.raises(ValueError, match="max_iter"):
        load_config(DetectConfig, bad)
