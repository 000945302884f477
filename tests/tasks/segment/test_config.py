"""Every segmentation YAML loads into SegmentConfig; label-fraction parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.common.config import load_config
from tasks.segment.config import SegmentConfig, stage_config
from tasks.segment.splits import fraction_tag, parse_fraction

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs" / "segment").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads(path: Path) -> None:
    cfg = load_config(SegmentConfig, path)
    assert all(v % 32 == 0 for v in (*cfg.data.crop_size, *cfg.pretrain.crop_size))
    assert set(stage_config(cfg, "pretrain")) == {
        "model",
        "data",
        "noise",
        "pretrain",
        "seed",
        "device",
    }


def test_ddep_config_freezes_an_imagenet_encoder() -> None:
    cfg = load_config(
        SegmentConfig, next(p for p in CONFIGS if p.name == "cityscapes_ddep_r50.yaml")
    )
    assert cfg.pretrain.mode == "ddep" and cfg.model.encoder_init == "imagenet"
    assert cfg.model.encoder == "resnet50"  # inherited from the DeP recipe


def test_fractions() -> None:
    assert [fraction_tag(f) for f in ("1/30", "1/8", "0.25", "full")] == [
        "1_30",
        "1_8",
        "1_4",
        "full",
    ]
    with pytest.raises(ValueError, match="must be in"):
        parse_fraction("3/2")
    with pytest.raises(ValueError, match="not 'full'"):
        parse_fraction("half")
