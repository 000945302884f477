"""Issue 13 item 5: Cityscapes prediction inputs that once crashed or were silently truncated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import png
from evaluation.cityscapes import CityscapesEvaluator, evaluate_dirs, frame_stats
from tests.evaluation.oracles import cityscapes_eval
from tests.evaluation.synth import synthetic_frame
from tests.evaluation.test_cityscapes import assert_same, feed, write_frames

pytest.importorskip("cityscapesscripts")
DECODERS_HERE = [
    d
    for d in png.DECODERS
    if not (d == "spng" and png.pyspng is None or d == "cv2" and png.cv2 is None)
]
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def test_16bit_prediction_pngs_are_scored_like_cityscapesscripts(tmp_path):
    rng = np.random.default_rng(5)
    frames = [synthetic_frame(rng) for _ in range(3)]
    paths = write_frames(tmp_path, [(p.astype(np.uint16), g, i) for p, g, i in frames])
    assert Image.open(paths[0][0]).mode.startswith("I;16")
    paths = sorted(paths, key=lambda x: str(x[1]))
    ref = cityscapes_eval([p for p, _ in paths], [g for _, g in paths], tmp_path)
    for decoder in DECODERS_HERE:
        ours = evaluate_dirs(
            tmp_path / "gtFine",
            tmp_path / "pred",
            device="cpu",
            progress=False,
            workers=2,
            decoder=decoder,
        )
        assert_same(ours, ref)


@pytest.mark.parametrize("which", ["pred", "gt", "inst"])
@pytest.mark.parametrize("decoder", DECODERS_HERE)
def test_truncated_png_gives_an_error_naming_the_file(tmp_path, which, decoder):
    rng = np.random.default_rng(6)
    paths = write_frames(tmp_path, [synthetic_frame(rng) for _ in range(2)])
    pred, gt = paths[1]
    victim = {"pred": pred, "gt": gt, "inst": gt.with_name(gt.name.replace("label", "instance"))}
    victim = victim[which]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{victim.name}.*(truncated|corrupt)"):
        evaluate_dirs(
            tmp_path / "gtFine", tmp_path / "pred", device="cpu", progress=False, decoder=decoder
        )


def test_fractional_float_labels_are_refused_not_truncated():
    gt = np.full((4, 6), 7, np.uint8)
    pred = np.full((4, 6), 7.0, np.float32)
    pred[1, 2] = 26.5
    with pytest.raises(ValueError, match=r"frankfurt_000000_000294\.png.*fractional.*26\.5"):
        frame_stats(
            torch.from_numpy(pred), torch.from_numpy(gt), None, name="frankfurt_000000_000294.png"
        )
    ev = CityscapesEvaluator(pred_ids="train", device="cpu")
    with pytest.raises(ValueError, match=r"bochum\.png.*fractional"):
        feed(ev, np.full((4, 6), 0.25), gt, None, "bochum.png")
    # whole-number floats are labels
    conf, _ = frame_stats(torch.from_numpy(np.full((4, 6), 7.0)), torch.from_numpy(gt), None)
    assert int(conf[7, 7]) == 24
    with pytest.raises(ValueError, match="x.png.*NaN"):
        frame_stats(torch.full((4, 6), float("nan")), torch.from_numpy(gt), None, name="x.png")


@pytest.mark.parametrize("decoder", DECODERS_HERE)
def test_every_decoder_gives_pillows_array(tmp_path, decoder):
    rng = np.random.default_rng(9)
    lab = rng.integers(0, 34, (12, 20)).astype(np.uint8)
    cases = {
        "grey8.png": Image.fromarray(lab),
        "grey16.png": Image.fromarray(lab.astype(np.uint16) * 1001),
        "palette.png": Image.fromarray(lab, mode="L").convert("P"),
        "bits.png": Image.fromarray(lab > 10),
        "rgb.png": Image.fromarray(np.stack([lab, lab * 2, lab * 3], -1)),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
    Image.fromarray(lab).save(tmp_path / "trns.png", transparency=5)
    for f in sorted(tmp_path.glob("*.png")):
        ref = np.array(Image.open(f))
        got = png.read_png(f, decoder=decoder)
        assert got.dtype == ref.dtype and np.array_equal(got, ref), f.name
