"""The embedded synthetic dataset: valid COCO, deterministic, varied (sizes, categories, empty images)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from PIL import Image

from tasks.detect.synthetic import (
    CATEGORIES,
    SyntheticSpec,
    contrasting_colour,
    ensure_synthetic_dataset,
    render_image,
)

SPEC = SyntheticSpec(num_train=60, num_val=20, empty_fraction=0.1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "shapes"
    return root, ensure_synthetic_dataset(root, SPEC)


def test_layout_and_coco_validity(dataset):
    root, paths = dataset
    for split, count in (("train", SPEC.num_train), ("val", SPEC.num_val)):
        data = json.loads(open(paths[f"{split}_json"]).read())
        assert len(data["images"]) == count
        assert [c["name"] for c in data["categories"]] == list(CATEGORIES)
        sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
        for im in data["images"][:5]:
            assert (
                Image.open(f"{paths[f'{split}_images']}/{im['file_name']}").size == sizes[im["id"]]
            )
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = sizes[ann["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
            assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])


def test_variety(dataset):
    _, paths = dataset
    data = json.loads(open(paths["train_json"]).read())
    areas = np.array([a["area"] for a in data["annotations"]])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any()
    assert len({a["category_id"] for a in data["annotations"]}) == len(CATEGORIES)
    with_anns = {a["image_id"] for a in data["annotations"]}
    assert len(with_anns) < len(data["images"])  # some empty images are kept


def test_reused_when_present_and_deterministic(dataset, tmp_path):
    root, paths = dataset
    stamp = (root / "DONE.json").stat().st_mtime_ns
    ensure_synthetic_dataset(root, SPEC)
    assert (root / "DONE.json").stat().st_mtime_ns == stamp
    other = ensure_synthetic_dataset(tmp_path / "again", SPEC)
    assert open(other["val_json"]).read() == open(paths["val_json"]).read()


def test_boxes_are_tight_around_visible_pixels(monkeypatch):
    rng = np.random.default_rng(0)
    image, objects = render_image(rng, 128, 128, 5)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    for category, (x, y, w, h), area in objects:
        assert 0 <= category < len(CATEGORIES) and 0 < area <= w * h
        assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
    # Tightness, observed: paint object i in the flat colour i + 1 on a black background (no clutter), so
    # its visible pixels can be read back from the image; the box must be their exact bounding box.
    import tasks.detect.synthetic as synthetic

    painted = []

    def flat_paint(rng, image, mask, min_contrast=0.0):
        painted.append(len(painted) + 1)
        image[mask] = painted[-1]

    monkeypatch.setattr(synthetic, "_background", lambda rng, h, w: np.zeros((h, w, 3), np.uint8))
    monkeypatch.setattr(synthetic, "_paint", flat_paint)
    monkeypatch.setattr(synthetic, "_clutter", lambda rng, image, owner: None)
    for seed in range(4):
        painted.clear()
        image, objects = render_image(np.random.default_rng(seed), 96, 128, 6)
        boxes = []
        for colour in painted:
            ys, xs = np.nonzero(image[..., 0] == colour)
            if len(xs) >= synthetic.MIN_PIXELS:
                boxes.append(
                    (
                        [
                            float(xs.min()),
                            float(ys.min()),
                            float(xs.max() + 1 - xs.min()),
                            float(ys.max() + 1 - ys.min()),
                        ],
                        float(len(xs)),
                    )
                )
        assert boxes and [(b, a) for _, b, a in objects] == boxes, seed


def test_spec_with_tuple_fields_is_reused_not_regenerated(tmp_path):
    # The DONE.json stamp is JSON (lists); a spec with tuple fields must still match it.
    spec = SyntheticSpec(num_train=4, num_val=2, size_probs=(0.2, 0.5, 0.3), min_contrast=50.0)
    root = tmp_path / "shapes"
    ensure_synthetic_dataset(root, spec)
    stamp = (root / "DONE.json").stat().st_mtime_ns
    ensure_synthetic_dataset(root, spec)
    assert (root / "DONE.json").stat().st_mtime_ns == stamp
    ensure_synthetic_dataset(root, SyntheticSpec(num_train=4, num_val=2))  # other spec: regenerated
    assert (root / "DONE.json").stat().st_mtime_ns != stamp


@pytest.mark.parametrize("bucket", [0, 2])
def test_size_buckets_follow_the_spec(bucket):
    probs = tuple(1.0 if i == bucket else 0.0 for i in range(3))
    spec = SyntheticSpec(size_probs=probs, min_visible=0.95)
    rng = np.random.default_rng(1)
    sides = []
    for _ in range(20):
        _, objects = render_image(rng, 160, 160, 2, spec)
        sides += [max(w, h) for _, (_, _, w, h), _ in objects]
    assert sides
    if bucket == 0:  # small: diameter <= 36 px, stretched by at most sqrt(exp(0.4)) on one axis
        assert max(sides) <= 36 * math.exp(0.2) + 1
    else:  # large: diameter >= 110 px, so the visible box is big unless truncated at the border
        assert np.median(sides) >= 70


def test_contrasting_colour_keeps_its_distance_and_is_deterministic():
    under = np.array([120.0, 130.0, 110.0], dtype=np.float32)
    rng = np.random.default_rng(3)
    colours = [contrasting_colour(rng, under, 150.0) for _ in range(200)]
    assert min(np.linalg.norm(c - under) for c in colours) >= 150.0
    again = np.random.default_rng(3)
    assert all((contrasting_colour(again, under, 150.0) == c).all() for c in colours)
    # without a constraint exactly one colour is drawn (the default dataset's RNG stream is unchanged)
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    contrasting_colour(a, under, 0.0)
    b.integers(0, 256, size=3)
    assert a.integers(0, 1 << 30) == b.integers(0, 1 << 30)


# Issue 12: the embedded default's val split is frozen (same generator version, spec and seed): its
# annotation file and its pixels must never change. Hashes of the files generated by the code of
# 2026-12-02 (commit c6906bc) with configs/detect/default_synthetic.yaml's spec.
FROZEN_VAL_JSON_SHA256 = "6cfaf58d7122ff1be392e4c5d7ab258025eec5c2418c87ec6df344724b29c6b1"
FROZEN_VAL_PIXELS_SHA256 = (
    "17e9ab53795cdf2b351093fbd51fd2a23a7b084690d157ed4901c9976ea380f1"  # raw RGB arrays
)


class _HashingImage:
    """Stands in for ``PIL.Image`` inside the generator: hashes val pixels instead of writing PNGs."""

    def __init__(self, digests: dict) -> None:
        self.digests = digests

    def __getattr__(self, name: str):
        return getattr(Image, name)  # everything but fromarray: the real PIL.Image

    def fromarray(self, array: np.ndarray):
        digests = self.digests

        class _Saver:
            def save(self, path, **_kw):
                if path.parent.name == "val":
                    digests[path.name] = hashlib.sha256(
                        np.ascontiguousarray(array).tobytes()
                    ).digest()

        return _Saver()


def test_default_val_split_is_frozen(tmp_path, monkeypatch):
    import tasks.detect.synthetic as synthetic
    from tasks.common.config import load_config
    from tasks.detect.config import DetectConfig

    spec = load_config(DetectConfig, "configs/detect/default_synthetic.yaml").data.synthetic_spec
    digests: dict = {}
    monkeypatch.setattr(synthetic, "Image", _HashingImage(digests))
    paths = ensure_synthetic_dataset(tmp_path / "shapes", spec)
    raw = open(paths["val_json"], "rb").read()
    data = json.loads(raw)
    assert len(data["images"]) == 250 and len(data["annotations"]) == 608
    areas = np.array([a["area"] for a in data["annotations"]])
    fractions = [(areas < 32**2).mean(), ((areas >= 32**2) & (areas < 96**2)).mean()]
    assert np.round(fractions, 2).tolist() == [0.41, 0.57]
    assert hashlib.sha256(raw).hexdigest() == FROZEN_VAL_JSON_SHA256
    pixels = hashlib.sha256(b"".join(digests[k] for k in sorted(digests))).hexdigest()
    assert len(digests) == 250 and pixels == FROZEN_VAL_PIXELS_SHA256
