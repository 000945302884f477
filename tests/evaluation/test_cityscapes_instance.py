"""Cityscapes instance-level AP vs cityscapesscripts 2.3.0 evalInstanceLevelSemanticLabeling."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.cityscapes_instance import (
    INST_LABEL_IDS,
    CityscapesInstanceEvaluator,
    evaluate_dirs,
    format_table,
)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def instance_frame(rng: np.random.Generator, h: int = 96, w: int = 160):
    """GT instanceIds with instances of the 8 classes (some under 100 px), group regions (id < 1000), a
    caravan (ignored class), void areas; predictions: noisy copies (duplicates, wrong labels, tied
    scores), false positives on void and on group regions, an empty mask."""
    inst = np.full((h, w), 7, np.int32)
    inst[: h // 4] = 11
    inst[h // 4 : h // 4 + 6, : w // 3] = 0  # void
    inst[h - 8 :, w - 30 :] = 4  # static (void)
    k = 0
    objs = []
    for _ in range(int(rng.integers(4, 9))):
        lab = int(rng.choice([24, 25, 26, 26, 27, 28, 31, 32, 33, 29]))
        hh, ww = int(rng.integers(5, 30)), int(rng.integers(5, 40))
        y, x = int(rng.integers(0, h - hh)), int(rng.integers(0, w - ww))
        k += 1
        iid = lab * 1000 + k if rng.random() > 0.15 else lab  # some group regions
        inst[y : y + hh, x : x + ww] = iid
        objs.append((iid, lab))
    preds = []
    for iid, lab in objs:
        region = inst == iid
        if not region.any() or lab == 29:
            continue
        for _ in range(int(rng.choice([0, 1, 1, 2]))):
            m = np.roll(region, (int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), (0, 1))
            m &= rng.random((h, w)) > 0.02
            plab = lab if rng.random() > 0.1 else int(rng.choice(INST_LABEL_IDS))
            preds.append((m, plab, round(float(rng.random()), 1)))
    for _ in range(2):  # background false positives, one on void
        m = np.zeros((h, w), bool)
        y, x = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 12))
        m[y : y + 12, x : x + 12] = True
        preds.append((m, int(rng.choice(INST_LABEL_IDS)), round(float(rng.random()), 1)))
    m = np.zeros((h, w), bool)
    m[h // 4 : h // 4 + 6, 2:20] = True
    preds.append((m, 24, 0.9))
    preds.append((np.zeros((h, w), bool), 26, 0.5))
    return inst, preds


def write_instance_frames(root, n: int, seed: int):
    rng = np.random.default_rng(seed)
    gts, txts, frames = [], [], []
    for i in range(n):
        city = ["aachen", "bochum", "frankfurt"][i % 3]
        stem = f"{city}_{i:06d}_000019"
        gdir = root / "gtFine" / "val" / city
        gdir.mkdir(parents=True, exist_ok=True)
        pdir = root / "pred" / "masks"
        pdir.mkdir(parents=True, exist_ok=True)
        inst, preds = instance_frame(rng)
        Image.fromarray(inst.astype(np.uint16)).save(gdir / f"{stem}_gtFine_instanceIds.png")
        lines = []
        for j, (m, lab, conf) in enumerate(preds):
            name = f"{stem}_{j}.png"
            if j % 5 == 3:  # 1-bit and palette masks go through Pillow's conversion
                Image.fromarray(m).save(pdir / name)
            else:
                Image.fromarray(m.astype(np.uint8) * 255).save(pdir / name)
            lines.append(f"masks/{name} {lab} {conf}")
        (root / "pred" / f"{stem}_pred.txt").write_text("\n".join(lines) + "\n")
        gts.append(gdir / f"{stem}_gtFine_instanceIds.png")
        txts.append(root / "pred" / f"{stem}_pred.txt")
        frames.append((inst, preds))
    return gts, txts, frames


def official(gts, txts, pred_root, tmp_path, monkeypatch):
    if not hasattr(np, "in1d"):
        monkeypatch.setattr(
            np,
            "in1d",
            lambda a, b, invert=False: np.isin(a, b, invert=invert).ravel(),
            raising=False,
        )
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as ci

    monkeypatch.chdir(tmp_path)
    # it writes matches.json / gtInstances.json, and fails to serialise numpy 2 integers: skip the writes
    monkeypatch.setattr(ci, "writeDict2JSON", lambda *a, **k: None)
    monkeypatch.setattr(ci.args, "gtInstancesFile", str(tmp_path / "gtInstances.json"))
    monkeypatch.setattr(ci.args, "predictionPath", str(pred_root.resolve()))
    monkeypatch.setattr(ci.args, "predictionWalk", None)
    monkeypatch.setattr(ci.args, "JSONOutput", False)
    monkeypatch.setattr(ci.args, "quiet", True)
    with contextlib.redirect_stdout(io.StringIO()):
        return ci.evaluateImgLists([str(t) for t in txts], [str(g) for g in gts], ci.args)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("seed", [0, 1])
def test_equal_to_cityscapesscripts(tmp_path, monkeypatch, seed):
    pytest.importorskip("cityscapesscripts")
    root = tmp_path / "data"
    gts, txts, frames = write_instance_frames(root, n=6, seed=seed)
    ref = official(gts, txts, root / "pred", tmp_path, monkeypatch)
    ours = evaluate_dirs(root / "gtFine", root / "pred", device="cpu")
    mat = np.array(list(ours["per_class_by_overlap"].values()))
    refm = np.array(ref["resultApMatrix"][0])
    assert np.array_equal(mat, refm, equal_nan=True), (mat, refm)
    avg = ref["averages"]
    assert same(ours["AP"], avg["allAp"]) and same(ours["AP50"], avg["allAp50%"])
    for name, v in avg["classes"].items():
        assert same(ours["per_class"][name], v["ap"]), name
        assert same(ours["per_class_AP50"][name], v["ap50%"]), name
    assert 0.05 < ours["AP"] < 0.9
    assert "average" in format_table(ours)

    # the streaming API on the decoded frames gives the same numbers
    ev = CityscapesInstanceEvaluator(device="cpu")
    for (inst, preds), g in zip(frames, gts):
        keep = [p for p in preds]
        ev.process(
            [{"instances": torch.from_numpy(inst), "file_name": str(g)}],
            [
                {
                    "masks": torch.from_numpy(np.stack([p[0] for p in keep])),
                    "labels": torch.tensor([INST_LABEL_IDS.index(p[1]) for p in keep]),
                    "scores": torch.tensor([p[2] for p in keep], dtype=torch.float64),
                }
            ],
        )
    res = ev.evaluate()
    assert same(res["AP"], ours["AP"]) and same(res["AP50"], ours["AP50"])


def test_min_region_and_strict_overlap():
    """One GT car of 100 px and one of 99 px; a prediction at IoU exactly 0.5 is no match at 0.5."""
    inst = np.full((20, 30), 7, np.int64)
    inst[0:10, 0:10] = 26001  # 100 px
    inst[12:21, 0:11] = 26002  # 8 x 11 = 88 px: below the minimum size, ignored
    m1 = np.zeros((20, 30), bool)
    m1[0:10, 0:5] = True  # 50 px inside the first car: IoU 50 / 100 = 0.5 -> not > 0.5
    m2 = np.zeros((20, 30), bool)
    m2[12:20, 0:11] = True  # on the small car: ignored, not an FP
    ev = CityscapesInstanceEvaluator(device="cpu", labels_are_label_ids=True)
    ev.process(
        [{"instances": inst}],
        [{"masks": np.stack([m1, m2]), "labels": [26, 26], "scores": [0.9, 0.8]}],
    )
    res = ev.evaluate()
    assert res["per_class"]["car"] == 0.0  # GT and predictions, no match above 0.5
    assert math.isnan(res["per_class"]["person"])  # neither GT nor prediction
    m1[0:10, 5:6] = True  # 60 px: IoU 0.6 -> TP at 0.5 and 0.55, not at 0.6
    ev.reset()
    ev.process(
        [{"instances": inst}],
        [{"masks": np.stack([m1, m2]), "labels": [26, 26], "scores": [0.9, 0.8]}],
    )
    assert ev.evaluate()["per_class_by_overlap"]["car"][:3] == [1.0, 1.0, 0.0]


def test_bad_input_names_the_entry(tmp_path):
    root = tmp_path / "data"
    gts, txts, _ = write_instance_frames(root, n=2, seed=3)
    txt = txts[1]
    txt.write_text(txt.read_text() + "masks/x.png 26\n")
    with pytest.raises(ValueError, match=rf"{txt.name}:\d+: expected"):
        evaluate_dirs(root / "gtFine", root / "pred", device="cpu")
    txt.write_text("../../outside.png 26 0.5\n")
    with pytest.raises(ValueError, match="outside the prediction folder"):
        evaluate_dirs(root / "gtFine", root / "pred", device="cpu")
    txt.unlink()
    with pytest.raises(ValueError, match="no prediction txt for frame bochum_000001_000019"):
        evaluate_dirs(root / "gtFine", root / "pred", device="cpu")
    ev = CityscapesInstanceEvaluator(device="cpu")
    with pytest.raises(ValueError, match=r"f\.png: labels \[9\] outside 0..7"):
        ev.process(
            [{"instances": np.zeros((4, 4), np.int64), "file_name": "f.png"}],
            [{"masks": np.zeros((1, 4, 4), bool), "labels": [9], "scores": [0.5]}],
        )


def test_cli(tmp_path, capsys):
    import json

    from evaluation.__main__ import main

    root = tmp_path / "data"
    write_instance_frames(root, n=3, seed=7)
    out = tmp_path / "out.json"
    assert (
        main(
            [
                "cityscapes-instance",
                "--gt",
                str(root / "gtFine"),
                "--pred",
                str(root / "pred"),
                "--device",
                "cpu",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert "average" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    ref = evaluate_dirs(root / "gtFine", root / "pred", device="cpu")
    assert saved["AP"] == ref["AP"] and saved["AP50"] == ref["AP50"]


@pytest.mark.gpu
def test_cuda_equals_cpu(tmp_path):
    root = tmp_path / "data"
    write_instance_frames(root, n=3, seed=9)
    a = evaluate_dirs(root / "gtFine", root / "pred", device="cpu")
    b = evaluate_dirs(root / "gtFine", root / "pred", device="cuda")
    ma, mb = (np.array(list(r["per_class_by_overlap"].values())) for r in (a, b))
    assert np.array_equal(ma, mb, equal_nan=True)
