"""Cityscapes metrics vs cityscapesscripts 2.3.0 on synthetic Cityscapes-layout frames and the real frame."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.cityscapes import LABELS, CityscapesEvaluator, evaluate_dirs, find_frames
from tests.evaluation.oracles import cityscapes_eval
from tests.evaluation.synth import synthetic_frame

pytest.importorskip("cityscapesscripts")
TRAIN_IDS = np.array(
    [lb.train_id if lb.train_id != -1 else 255 for lb in LABELS if lb.id >= 0], dtype=np.uint8
)


def write_frames(root, frames):
    paths = []
    for i, (pred, gt, inst) in enumerate(frames):
        city = ["aachen", "bochum", "frankfurt"][i % 3]
        stem = f"{city}_{i:06d}_000019"
        gdir = root / "gtFine" / "val" / city
        gdir.mkdir(parents=True, exist_ok=True)
        pdir = root / "pred"
        pdir.mkdir(exist_ok=True)
        Image.fromarray(gt).save(gdir / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(inst).save(gdir / f"{stem}_gtFine_instanceIds.png")
        Image.fromarray(pred).save(pdir / f"{stem}_pred.png")
        paths.append((pdir / f"{stem}_pred.png", gdir / f"{stem}_gtFine_labelIds.png"))
    return paths


def assert_same(ours: dict, ref: dict) -> None:
    for key in ("classScores", "classInstScores", "categoryScores", "categoryInstScores"):
        assert ours[key].keys() == ref[key].keys(), key
        for name, v in ref[key].items():
            o = ours[key][name]
            assert (math.isnan(o) and math.isnan(v)) or o == v, f"{key}[{name}]: {o!r} != {v!r}"
    for key in (
        "averageScoreClasses",
        "averageScoreInstClasses",
        "averageScoreCategories",
        "averageScoreInstCategories",
    ):
        assert ours[key] == ref[key] or (math.isnan(ours[key]) and math.isnan(ref[key])), key
    assert ours["confMatrix"] == ref["confMatrix"]


def feed(ev, pred, gt, inst, name):
    """One frame into the evaluator, with either process() signature (arrays, or the protocol's
    inputs / outputs dicts)."""
    import inspect

    if "inputs" in inspect.signature(ev.process).parameters:
        inp = {"sem_seg": gt, "file_name": name}
        if inst is not None:
            inp["instances"] = inst
        ev.process([inp], [{"sem_seg": pred}])
    else:
        ev.process(pred, gt, inst, name=name)


def test_synthetic_frames_labelids_and_trainids(tmp_path):
    rng = np.random.default_rng(0)
    frames = [synthetic_frame(rng) for _ in range(6)]
    paths = write_frames(tmp_path, frames)
    ref = cityscapes_eval(
        [p for p, _ in sorted(paths, key=lambda x: str(x[1]))],
        [g for _, g in sorted(paths, key=lambda x: str(x[1]))],
        tmp_path,
    )
    ours = evaluate_dirs(
        tmp_path / "gtFine", tmp_path / "pred", device="cpu", progress=False, workers=2
    )
    assert_same(ours, ref)
    assert not math.isnan(ours["averageScoreInstClasses"])
    # the same frames through the streaming API with trainId predictions (void predictions -> unlabeled)
    ev = CityscapesEvaluator(pred_ids="train", device="cpu")
    for (_pred, gt, inst), (p, _g) in sorted(zip(frames, paths), key=lambda x: str(x[1][1])):
        feed(ev, TRAIN_IDS[np.array(Image.open(p))], gt, inst, p.name)
    ref_t = cityscapes_eval(
        *_trainid_roundtrip(tmp_path, sorted(paths, key=lambda x: str(x[1]))), tmp_path
    )
    assert_same(ev.official(), ref_t)


def _trainid_roundtrip(tmp_path, paths):
    """Official input for trainId predictions: trainId -> labelId (void -> 0) written as labelId PNGs."""
    from evaluation.cityscapes import TRAIN_TO_LABEL

    out = tmp_path / "pred_rt"
    out.mkdir()
    preds = []
    for p, _ in paths:
        lab = TRAIN_TO_LABEL[TRAIN_IDS[np.array(Image.open(p))]].astype(np.uint8)
        Image.fromarray(lab).save(out / p.name)
        preds.append(out / p.name)
    return preds, [g for _, g in paths]


def test_real_frame(shared_data, tmp_path):
    src = shared_data / "cityscapes_one_frame"
    gt_dir = src / "gtFine" / "val"
    gt = np.array(Image.open(next(gt_dir.rglob("*_labelIds.png"))))
    rng = np.random.default_rng(1)
    pred = gt.copy()
    flip = rng.random(gt.shape) < 0.1
    pred[flip] = rng.choice([7, 8, 26, 24, 21, 0], size=int(flip.sum()))
    pdir = tmp_path / "pred"
    pdir.mkdir()
    Image.fromarray(pred).save(pdir / "frankfurt_000000_000294_leftImg8bit.png")
    ref = cityscapes_eval(
        [pdir / "frankfurt_000000_000294_leftImg8bit.png"],
        [next(gt_dir.rglob("*_labelIds.png"))],
        tmp_path,
    )
    assert_same(evaluate_dirs(gt_dir, pdir, device="cpu", progress=False), ref)


def test_missing_prediction_and_bad_values(tmp_path):
    rng = np.random.default_rng(2)
    paths = write_frames(tmp_path, [synthetic_frame(rng) for _ in range(2)])
    paths[0][0].unlink()
    with pytest.raises(ValueError, match="no prediction PNG for frame aachen_000000_000019"):
        find_frames(tmp_path / "gtFine", tmp_path / "pred")
    ev = CityscapesEvaluator(device="cpu")
    gt = np.full((4, 4), 7, np.uint8)
    with pytest.raises(ValueError, match="outside labelIds"):
        feed(ev, np.full((4, 4), 255, np.uint8), gt, None, "f1")
    with pytest.raises(ValueError, match="unknown labelId"):
        feed(ev, gt, np.full((4, 4), 40, np.uint8), None, "f2")
    shutil.rmtree(tmp_path / "pred")


def test_counting_paths_agree():
    """numba one-pass kernel (when installed), numpy 16-bit codes, and the torch path CUDA uses: the
    same integers; out-of-range values raise the same named errors on every path."""
    from evaluation import pixel_counts
    from evaluation.cityscapes import _frame_stats_cpu, _frame_stats_torch, frame_stats

    rng = np.random.default_rng(7)
    for h, w in ((96, 160), (96, 160), (37, 53), (64, 64)):  # 8-pixel blocks and an odd size
        pred, gt, inst = synthetic_frame(rng, h, w)
        for p in (pred, pred.astype(np.uint16), pred.astype(np.float32)):
            args = [torch.from_numpy(p), torch.from_numpy(gt), torch.from_numpy(inst)]
            c1, r1 = frame_stats(*args)
            c2, r2 = _frame_stats_torch(*args, "x")
            c3, r3 = _frame_stats_cpu(p.astype(np.int64), gt, inst, "x")
            assert torch.equal(c1, c2) and torch.equal(r1, r2)
            assert torch.equal(c1, c3) and torch.equal(r1, r3)
            assert r1.shape[0] > 0
    if pixel_counts.count_frame is not None:
        status, conf, ids, hist = pixel_counts.count_frame(pred, gt, inst)
        assert (
            status == 0
            and int(conf.sum()) == gt.size
            and int(hist.sum()) == int((inst > 1000).sum())
        )
        assert ids.tolist() == sorted(set(np.unique(inst[inst > 1000]).tolist()))
    bad = inst.astype(np.int32)
    bad[3, 4] = 34001
    with pytest.raises(ValueError, match="f.png: instance id 34001 has unknown labelId"):
        frame_stats(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(bad), "f.png")
    bad[3, 4] = -2
    with pytest.raises(ValueError, match="f.png: instance map: value -2"):
        frame_stats(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(bad), "f.png")
    good = [torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(inst)]
    c1, r1 = frame_stats(*good)  # the reused per-thread buffers are clean after a failed frame
    c2, r2 = _frame_stats_torch(*good, "x")
    assert torch.equal(c1, c2) and torch.equal(r1, r2)
    badp = pred.copy()
    badp[0, 0] = 40
    with pytest.raises(ValueError, match="f.png: prediction outside labelIds 0..33: value 40"):
        frame_stats(torch.from_numpy(badp), torch.from_numpy(gt), torch.from_numpy(inst), "f.png")


@pytest.mark.gpu
def test_cuda_equals_cpu():
    rng = np.random.default_rng(8)
    frames = [synthetic_frame(rng) for _ in range(3)]
    out = []
    for dev in ("cpu", "cuda"):
        ev = CityscapesEvaluator(device=dev)
        for k, (pred, gt, inst) in enumerate(frames):
            feed(ev, pred, gt, inst, f"frame{k}.png")
        out.append(ev.official())
    assert_same(out[1], out[0])
