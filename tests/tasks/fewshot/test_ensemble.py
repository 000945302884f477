"""Saved ensembles: identical predictions after a round trip, refusal on other features, predict.py
outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.common.config import load_config
from tasks.fewshot import predict
from tasks.fewshot import train as fewshot_train
from tasks.fewshot.config import FewShotConfig, build_unet
from tasks.fewshot.diffusion import read_unet_state
from tasks.fewshot.ensemble import (
    FeatureSpecMismatch,
    check_feature_spec,
    load_ensemble,
    save_ensemble,
)
from tasks.fewshot.pixel_classifier import EnsembleMLP, predict_image
from tasks.fewshot.pixel_features import features_for_spec, pixel_features

TINY = [
    "unet.image_size=16",
    "unet.num_channels=32",
    "unet.num_res_blocks=1",
    "unet.channel_mult='1,2'",
    "unet.attention_resolutions='8'",
    "unet.dropout=0.0",
    "data.height=16",
    "data.width=16",
    "device=cpu",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny few-shot run (diffusion + rgb_pos ensembles) on a DDPM-Seg-layout folder."""
    root = tmp_path_factory.mktemp("fewshot")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        (root / "data" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                root / "data" / split / f"{i}.png"
            )
            np.save(root / "data" / split / f"{i}.npy", (np.arange(256).reshape(16, 16) // 64) % 3)
    cfg = load_config(
        FewShotConfig,
        None,
        TINY
        + [
            f"output_dir={root / 'out'}",
            "data.kind=ddpmseg",
            f"data.root={root / 'data'}",
            "data.train_split=train",
            "data.val_split=test",
            "data.num_classes=3",
            "data.ignore_index=255",
            "data.class_names=[a, b, c]",
            f"diffusion.checkpoint={root / 'unet.pt'}",
            "features.blocks=[1,2]",
            "features.timesteps=[10, 50]",
            "classifier.num_models=3",
            "classifier.max_iterations=30",
            "k=2",
            "num_overlays=0",
            "experiment.methods=[diffusion, rgb_pos]",
        ],
    )
    torch.manual_seed(0)
    torch.save(build_unet(cfg).state_dict(), root / "unet.pt")
    fewshot_train.run(cfg)
    return root, cfg


def test_round_trip_gives_identical_predictions(trained, tmp_path):
    root, cfg = trained
    ens = load_ensemble(root / "out" / "diffusion_k2_seed0" / "ensemble.pt")
    assert ens.class_names == ["a", "b", "c"] and ens.image_size == (16, 16) and ens.train["k"] == 2
    assert ens.feature_spec["blocks"] == [1, 2] and ens.feature_spec["timesteps"] == [10, 50]
    assert ens.feature_spec["noise_device"] == "cpu" and len(ens.feature_spec["unet_sha1"]) == 40
    feats = features_for_spec(
        ens.feature_spec, unet_state=read_unet_state(ens.checkpoint_path), device="cpu"
    )
    check_feature_spec(ens.feature_spec, feats.spec)
    image = torch.rand(3, 16, 16) * 2 - 1
    maps = feats([image])[0]
    before = predict_image(ens.model, maps, (16, 16))
    again = tmp_path / "again.pt"
    save_ensemble(
        again,
        ens.model,
        class_names=ens.class_names,
        ignore_index=ens.ignore_index,
        palette=ens.palette,
        feature_spec=ens.feature_spec,
        checkpoint_path=ens.checkpoint_path,
        train=ens.train,
    )
    after = predict_image(load_ensemble(again).model, maps, (16, 16))
    assert torch.equal(before.majority, after.majority) and torch.equal(before.soft, after.soft)
    assert torch.equal(before.js, after.js)
    # the prediction is a function of the weights: a re-initialised ensemble predicts differently
    other = EnsembleMLP(ens.model.in_dim, 3, 3, generator=torch.Generator().manual_seed(5)).eval()
    assert not torch.equal(predict_image(other, maps, (16, 16)).js, before.js)


def test_other_checkpoint_or_feature_setting_is_refused_by_name(trained, tmp_path):
    root, cfg = trained
    ensemble = root / "out" / "diffusion_k2_seed0" / "ensemble.pt"
    ens = load_ensemble(ensemble)
    other = build_unet(cfg)  # same architecture, other weights
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(FeatureSpecMismatch, match="unet_sha1"):
        predict.main(
            [
                "--ensemble",
                str(ensemble),
                "--input",
                str(root / "data" / "test"),
                "--output",
                str(tmp_path / "p"),
                "--checkpoint",
                str(tmp_path / "other.pt"),
            ]
        )
    assert not (tmp_path / "p" / "0_label.png").exists()
    changed = pixel_features(
        load_config(FewShotConfig, None, [*TINY, "features.blocks=[1]", "features.noise_seed=3"]),
        "diffusion",
        unet=other,
        device="cpu",
    )
    with pytest.raises(FeatureSpecMismatch) as err:
        check_feature_spec(ens.feature_spec, changed.spec)
    message = str(err.value)
    assert (
        "blocks: [1, 2] (ensemble) -> [1] (now)" in message
        and "noise_seed: 0 (ensemble) -> 3 (now)" in message
    )
    assert "unet_sha1" in message and "image_size" not in message


def test_predict_writes_input_sized_pngs(trained, tmp_path):
    root, _ = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    sizes = {"wide": (20, 37), "tall": (41, 16), "same": (16, 16)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            inputs / f"{name}.png"
        )
    for method in ("diffusion", "rgb_pos"):
        out = tmp_path / method
        summary = predict.main(
            [
                "--ensemble",
                str(root / "out" / f"{method}_k2_seed0" / "ensemble.pt"),
                "--input",
                str(inputs),
                "--output",
                str(out),
                "--batch-size",
                "2",
            ]
        )
        assert len(summary["images"]) == 3
        for name, (h, w) in sizes.items():
            label = np.asarray(Image.open(out / f"{name}_label.png"))
            assert label.shape == (h, w) and label.dtype == np.uint8 and label.max() < 3
            assert np.asarray(Image.open(out / f"{name}_overlay.png")).shape == (h, w, 3)
            assert np.asarray(Image.open(out / f"{name}_uncertainty.png")).shape == (h, w)
        record = json.loads((out / "predictions.json").read_text())["images"][
            str(inputs / "wide.png")
        ]
        assert sum(record["pixels_per_class"].values()) == 20 * 37 and record["size_hw"] == [20, 37]
    with pytest.raises(ValueError, match="no such file or folder"):
        predict.main(
            [
                "--ensemble",
                str(root / "out" / "rgb_pos_k2_seed0" / "ensemble.pt"),
                "--input",
                str(tmp_path / "missing"),
                "--output",
                str(tmp_path / "x"),
            ]
        )


def test_not_an_ensemble_file_is_named(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="x.pt: not a few-shot ensemble file"):
        load_ensemble(tmp_path / "x.pt")
