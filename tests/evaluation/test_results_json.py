"""The flat bbox-results decoder (numba) against Python's json + float(), and the evaluator protocol."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from evaluation.results_json import decode_bbox_results


def _numbers(rng: np.random.Generator) -> list[str]:
    """Number spellings a results file holds: float32 outputs widened to float64 (up to 17 digits), random
    doubles, rounded decimals, tiny / huge exponents, integers, and the hard cases of correct rounding."""
    vals = np.concatenate(
        [
            (rng.random(3000) * 1333).astype(np.float32).astype(np.float64),
            rng.random(3000),
            np.round(rng.random(2000) * 1000, 2),
            rng.random(500) * 1e-7,
            rng.standard_normal(2000) * 10.0 ** rng.integers(-30, 30, 2000),
            [0.0, -0.0, 5e-324, 1.7976931348623157e308, 2.0**53 + 2],
        ]
    )
    return [repr(float(v)) for v in vals] + [
        "1E5",
        "1e+5",
        "0.1e1",
        "-0",
        "7",
        "9007199254740993",
        "9007199254740993.0",
        "1e23",
        "123456789012345678901234567890",
        "0.000000000000000000000000000000001",
        "1.00000000000000000000000001",
        "2.2250738585072011e-308",
        "0.30000000000000004",
    ]


def test_numbers_equal_python_float_bit_for_bit():
    strs = _numbers(np.random.default_rng(0))
    text = (
        "["
        + ",".join(
            f'{{"image_id": {i}, "category_id": 7, "extra": {{"a": [1, "q\\\\\\"}}"]}}, '
            f'"bbox": [{s}, 1, 2.5, {s}], "score": {s}}}'
            for i, s in enumerate(strs)
        )
        + "]"
    )
    ref = json.loads(text)  # the file is valid JSON
    img, cat, score, boxes = decode_bbox_results(text.encode())
    want = np.array([float(s) for s in strs])
    assert score.view(np.int64).tolist() == want.view(np.int64).tolist()
    assert boxes[:, 0].view(np.int64).tolist() == want.view(np.int64).tolist()
    assert img.tolist() == [d["image_id"] for d in ref] and set(cat.tolist()) == {7}
    assert boxes[:, 2].tolist() == [2.5] * len(strs)


@pytest.mark.parametrize(
    "text",
    [
        '[{"image_id": 1, "category_id": 7, "bbox": [], "score": 0.5}]',
        '[{"image_id": "1", "category_id": 7, "bbox": [1, 2, 3, 4], "score": 0.5}]',
        '[{"image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4], "score": "0.5"}]',
        '[{"image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4], "score": NaN}]',
        '[{"image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4]}]',
        '[{"image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4], "score": 1}',
        '[{"image_id": 1.0, "category_id": 7, "bbox": [1, 2, 3, 4], "score": 1}]',
        '[{"image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4], "score": 1, "score": 2}]',
        '{"image_id": 1}',
    ],
)
def test_outside_the_schema_goes_to_the_general_parser(text):
    assert decode_bbox_results(text.encode()) is None


def test_empty_list():
    img, _, score, boxes = decode_bbox_results(b" [ ] ")
    assert img.size == 0 and score.size == 0 and boxes.shape == (0, 4)


def test_file_path_and_list_give_the_same_arrays(tmp_path):
    from evaluation.coco_data import GroundTruth, parse_results
    from evaluation.synthetic import synth_coco

    gt, dets = synth_coco(40, 30, n_cats=5, seed=3)
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    g = GroundTruth.from_dataset(gt, require=("area", "bbox"))
    fast, slow = parse_results(tmp_path / "dt.json", g, "bbox"), parse_results(dets, g, "bbox")
    for key in ("img", "cat", "score", "boxes", "area"):
        assert getattr(fast, key).tobytes() == getattr(slow, key).tobytes(), key


def test_every_evaluator_follows_the_protocol():
    from evaluation.cityscapes import CityscapesEvaluator
    from evaluation.coco import COCOEvaluator
    from evaluation.lvis import LVISEvaluator
    from evaluation.protocol import Evaluator
    from evaluation.semseg import SemSegEvaluator

    gt = {
        "images": [
            {
                "id": 1,
                "height": 10,
                "width": 10,
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
        ],
        "categories": [{"id": 1, "name": "a", "frequency": "f"}],
        "annotations": [],
    }
    evaluators = [
        COCOEvaluator(gt, device="cpu"),
        LVISEvaluator(gt, device="cpu"),
        SemSegEvaluator(3, device="cpu"),
        CityscapesEvaluator(device="cpu"),
    ]
    for ev in evaluators:
        assert isinstance(ev, Evaluator), type(ev).__name__
        assert callable(importlib.import_module(type(ev).__module__).format_table)
    with pytest.raises(ValueError, match="2 inputs but 1 outputs"):
        evaluators[0].process([{"image_id": 1}, {"image_id": 1}], [{}])
    with pytest.raises(ValueError, match="has no 'scores'"):
        evaluators[0].process([{"image_id": 1}], [{"boxes": np.zeros((0, 4))}])


def test_big_file_scanned_in_two_pieces_equals_json():
    """> 4 MB: the file is split between two entries and scanned on two threads; entries hold nested
    values and strings that look like entry boundaries, so a split inside them must fall back safely."""
    rng = np.random.default_rng(5)
    entries = []
    for i in range(60000):
        d = {
            "image_id": i % 97,
            "category_id": int(rng.integers(1, 9)),
            "score": float(rng.random()),
            "bbox": [float(v) for v in (rng.random(4) * 500).astype(np.float32)],
        }
        if i % 3 == 0:
            d["note"] = '}, {"image_id": 5, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1}'
            d["nested"] = [{"a": 1}, {"b": [2, {"c": "}, {"}]}]
        entries.append(d)
    text = json.dumps(entries).encode()
    assert len(text) > 4 << 20
    img, cat, score, boxes = decode_bbox_results(text)
    assert img.tolist() == [d["image_id"] for d in entries]
    assert cat.tolist() == [d["category_id"] for d in entries]
    assert score.tolist() == [d["score"] for d in entries]
    assert boxes.tolist() == [d["bbox"] for d in entries]
