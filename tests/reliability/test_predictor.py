"""DiffusionDetector.predict on bad input (issue 13): every case gets a named error or a documented behaviour,
never a crash deep in a library or a silent wrong answer. Each test failed on the code before the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.detect import DiffusionDetector
from tests.tasks.detect.model_helpers import tiny_model


@pytest.fixture(scope="module")
def detector() -> DiffusionDetector:
    return DiffusionDetector(tiny_model().eval(), min_size=64, max_size=100)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("hw", [(600, 2), (2, 600)])
def test_very_thin_image_runs_and_boxes_stay_inside(
    detector: DiffusionDetector, hw: tuple[int, int]
) -> None:
    # before: PIL "height and width must be > 0" (the resize rounded the thin side to 0 px)
    out = detector.predict(_image(*hw), generator=torch.Generator().manual_seed(0))[0]
    boxes = out["boxes"]
    assert boxes.shape[1] == 4 and out["scores"].shape == out["labels"].shape == boxes.shape[:1]
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= hw[1]).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= hw[0]).all()


def test_empty_array_is_a_named_error(detector: DiffusionDetector) -> None:
    # before: ZeroDivisionError in the resize
    with pytest.raises(ValueError, match=r"image 1 is empty \(0x0 px\)"):
        detector.predict([_image(20, 30), np.zeros((0, 0, 3), np.uint8)])


def test_nan_image_is_a_named_error(detector: DiffusionDetector) -> None:
    # before: zero detections, silently
    image = _image(40, 50).astype(np.float32)
    image[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="image 0 holds NaN or Inf"):
        detector.predict(image)


def test_nan_weights_are_an_error_not_zero_detections() -> None:
    # before: zero detections, silently
    model = tiny_model().eval()
    with torch.no_grad():
        model.head.head_series[1].class_logits.weight[0, 0] = float("nan")
    with pytest.raises(
        FloatingPointError, match=r"weights hold NaN/Inf in 1 tensors: .*series\.1\.class_logits"
    ):
        DiffusionDetector(model, min_size=64, max_size=100)
    # the model itself refuses to turn non-finite scores into "no detections"
    with pytest.raises(
        FloatingPointError, match=r"non-finite scores or boxes for image\(s\) \[0, 1\]"
    ):
        model.inference([torch.full((3, 40, 50), 100.0)] * 2)


def test_nan_weights_file_is_refused_by_name(tmp_path) -> None:
    # before: loaded silently, then zero detections
    from tasks.common.config import save_config
    from tests.tasks.detect.model_helpers import tiny_config

    save_config(tiny_config(), tmp_path / "cfg.yaml")
    state = tiny_model().state_dict()
    state["head.head_series.1.class_logits.bias"][2] = float("nan")
    torch.save({"model": state}, tmp_path / "diverged.pt")
    with pytest.raises(
        ValueError, match=r"diverged\.pt.*NaN/Inf.*head\.head_series\.1\.class_logits\.bias"
    ):
        DiffusionDetector.from_config(tmp_path / "cfg.yaml", weights=tmp_path / "diverged.pt")


@pytest.mark.parametrize("kind", ["array", "tensor"])
def test_float_image_in_unit_range_is_refused(detector: DiffusionDetector, kind: str) -> None:
    # before: taken as 0..255, i.e. an almost black image, with meaningless detections
    image = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    given = image if kind == "array" else torch.from_numpy(image).permute(2, 0, 1)
    with pytest.raises(ValueError, match=r"looks like a \[0, 1\] image.*multiply by 255"):
        detector.predict(given)
    with pytest.raises(ValueError, match=r"values in \[-0.99.*expects RGB in 0..255"):
        detector.predict(image * 2 - 1)
    assert len(detector.predict(image * 255)) == 1  # the same image in 0..255 is fine


@pytest.mark.parametrize("num_boxes", [0, -3])
def test_num_boxes_below_one_is_an_error(detector: DiffusionDetector, num_boxes: int) -> None:
    # before: 0 was silently replaced by the training N
    with pytest.raises(ValueError, match=f"num_boxes must be an integer >= 1, got {num_boxes}"):
        detector.predict(_image(40, 50), num_boxes=num_boxes)


def test_batch_prediction_equals_single_image_prediction(detector: DiffusionDetector) -> None:
    # images of two sizes: equal sizes share a batch, the other size runs on its own (padding never leaks)
    images = [_image(50, 80, seed=1), _image(70, 40, seed=2), _image(50, 80, seed=3)]
    opts = detector.options(
        steps=3, box_renewal=True
    )  # renewal and DDIM noise draw from the generators

    def gens(*seeds: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]

    both = detector.predict(images, opts=opts, generator=gens(5, 6, 7))
    singles = [
        detector.predict(im, opts=opts, generator=gens(seed))[0]
        for im, seed in zip(images, (5, 6, 7))
    ]
    for batched, single in zip(both, singles):
        assert batched["scores"].shape == single["scores"].shape
        assert torch.equal(batched["labels"], single["labels"])
        for key in ("boxes", "scores"):  # float reorderings of the batched convolutions only
            torch.testing.assert_close(batched[key], single[key], atol=1e-3, rtol=1e-4)
