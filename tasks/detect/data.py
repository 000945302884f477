"""COCO-format and LVIS v1 detection datasets, samplers and collation.

A dataset keeps only compact per-image records (path, size, ``boxes_xyxy`` float32, contiguous ``labels``);
images are decoded lazily in ``__getitem__`` (i.e. in the DataLoader workers), so memory stays bounded
for large datasets.

Annotation hygiene (each reported once per JSON file as a counted warning that names the file):
crowd annotations are dropped; boxes with non-positive width/height, unknown categories, unknown images or
malformed ``bbox`` entries are skipped; boxes reaching outside the image are clipped to it (and skipped when
nothing is left). Images without annotations are kept (official ``FILTER_EMPTY_ANNOTATIONS: False``).

Contiguous labels: category ids sorted ascending map to ``0..K-1``; ``label_to_category_id[label]`` maps back.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from tasks.detect.transforms import Compose, Sample

logger = logging.getLogger(__name__)
CROWD = "crowd annotations dropped"  # expected, counted but not warned about


@dataclass
class ImageRecord:
    """One image: absolute ``boxes_xyxy`` (M, 4) float32 in original pixels, contiguous ``labels`` (M,) int64."""

    path: str
    image_id: int
    height: int
    width: int
    boxes_xyxy: np.ndarray
    labels: np.ndarray


@dataclass
class DetectionRecords:
    """Parsed annotation file."""

    json_path: str
    images: list[ImageRecord]
    label_to_category_id: list[int]
    category_names: list[str]
    class_image_counts: list[
        int
    ]  # images containing each class (LVIS ``image_count`` when present)
    issues: Counter = field(default_factory=Counter)


def _image_path(entry: dict, image_root: str, fmt: str) -> str:
    if "file_name" in entry:
        name = entry["file_name"]
        if fmt == "lvis" and name.startswith(
            "COCO_"
        ):  # LVIS v0.5 names like COCO_val2014_000000397133.jpg
            name = name[-16:]
        return os.path.join(image_root, name)
    if "coco_url" in entry:  # LVIS v1: image_root is the COCO root holding train2017/ and val2017/
        return os.path.join(image_root, *entry["coco_url"].split("/")[-2:])
    raise ValueError(f"image entry id={entry.get('id')} has neither 'file_name' nor 'coco_url'")


def load_detection_json(
    json_path: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    fmt: str = "coco",
    label_to_category_id: Sequence[int] | None = None,
) -> DetectionRecords:
    """Parse a COCO-format (or LVIS v0.5 / v1) instances JSON into compact records.

    Args:
        json_path: annotation file.
        image_root: folder the image file names are relative to (LVIS v1: the COCO root).
        fmt: ``"coco"`` or ``"lvis"``.
        label_to_category_id: reuse another split's label mapping (must hold the same category ids).

    Returns:
        :class:`DetectionRecords`; bad annotations are counted in ``issues`` and reported in one warning.
    """
    json_path, image_root = str(json_path), str(image_root)
    with open(json_path) as f:
        data = json.load(f)
    for key in ("images", "categories"):
        if key not in data:
            raise ValueError(f"{json_path}: missing top-level key '{key}'")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    cat_ids = [int(c["id"]) for c in categories]
    if label_to_category_id is not None and sorted(label_to_category_id) != cat_ids:
        raise ValueError(f"{json_path}: category ids differ from the training annotation file's")
    cat_to_label = {c: i for i, c in enumerate(cat_ids)}
    issues: Counter = Counter()
    per_image: dict[int, list[tuple[list[float], int]]] = {}
    sizes = {}
    for entry in data["images"]:
        if "height" not in entry or "width" not in entry:
            raise ValueError(f"{json_path}: image id={entry.get('id')} lacks 'height'/'width'")
        sizes[entry["id"]] = (int(entry["height"]), int(entry["width"]))
        per_image[entry["id"]] = []
    for ann in data.get("annotations", []):
        parsed = _parse_annotation(ann, sizes, cat_to_label, issues)
        if parsed is not None:
            per_image[ann["image_id"]].append(parsed)
    images = []
    for entry in data["images"]:
        anns = per_image[entry["id"]]
        boxes = np.array([a[0] for a in anns], dtype=np.float32).reshape(-1, 4)
        labels = np.array([a[1] for a in anns], dtype=np.int64)
        height, width = sizes[entry["id"]]
        images.append(
            ImageRecord(
                _image_path(entry, image_root, fmt), int(entry["id"]), height, width, boxes, labels
            )
        )
    counts = _class_image_counts(categories, images)
    problems = {what: n for what, n in issues.items() if what != CROWD}
    if problems:
        detail = ", ".join(f"{n} {what}" for what, n in sorted(problems.items()))
        logger.warning("%s: annotation problems handled: %s", json_path, detail)
    names = [str(c.get("name", c["id"])) for c in categories]
    return DetectionRecords(json_path, images, cat_ids, names, counts, issues)


def _parse_annotation(
    ann: dict, sizes: dict, cat_to_label: dict[int, int], issues: Counter
) -> tuple[list[float], int] | None:
    """Validate one annotation -> (clipped xyxy box, label) or None (skipped, counted in ``issues``)."""
    if ann.get("iscrowd", 0):
        issues[CROWD] += 1
        return None
    if ann.get("image_id") not in sizes:
        issues["annotations of unknown images skipped"] += 1
        return None
    if ann.get("category_id") not in cat_to_label:
        issues["annotations with unknown category skipped"] += 1
        return None
    bbox = ann.get("bbox")
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(math.isfinite(float(v)) for v in bbox)
    ):
        issues["malformed bbox entries skipped"] += 1
        return None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        issues["boxes with non-positive width/height skipped"] += 1
        return None
    height, width = sizes[ann["image_id"]]
    box = [
        min(max(x, 0.0), width),
        min(max(y, 0.0), height),
        min(max(x + w, 0.0), width),
        min(max(y + h, 0.0), height),
    ]
    if box != [x, y, x + w, y + h]:
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            issues["boxes entirely outside the image skipped"] += 1
            return None
        issues["boxes reaching outside the image clipped"] += 1
    return box, cat_to_label[ann["category_id"]]


def _class_image_counts(categories: list[dict], images: list[ImageRecord]) -> list[int]:
    if all("image_count" in c for c in categories):
        return [int(c["image_count"]) for c in categories]
    counts = np.zeros(len(categories), dtype=np.int64)
    for rec in images:
        counts[np.unique(rec.labels)] += 1
    return counts.tolist()


class DetectionDataset(Dataset):
    """Lazily decoded detection dataset.

    ``dataset[i]`` or ``dataset[(i, seed)]`` (the seed makes the random augmentation reproducible) returns a
    dict: ``image`` uint8 (3, H, W) RGB after the transform, ``boxes_xyxy`` float32 (M, 4) absolute pixels of
    that transformed image, ``labels`` int64 (M,), ``image_id``, ``orig_size`` (H0, W0) and ``file_name``.
    """

    def __init__(self, records: DetectionRecords, transform: Compose) -> None:
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records.images)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        rec = self.records.images[index]
        try:
            with Image.open(rec.path) as im:
                image = im.convert("RGB")
        except OSError as e:
            raise ValueError(
                f"{self.records.json_path}: cannot read image id={rec.image_id} at {rec.path}: {e}"
            ) from e
        if image.size != (rec.width, rec.height):
            raise ValueError(
                f"{self.records.json_path}: image id={rec.image_id} is {image.size[0]}x{image.size[1]} on disk "
                f"but {rec.width}x{rec.height} in the JSON ({rec.path})"
            )
        sample = self.transform(
            Sample(image, rec.boxes_xyxy, rec.labels), np.random.default_rng(seed)
        )
        array = np.asarray(sample.image, dtype=np.uint8)
        return {
            "image": torch.from_numpy(array.copy()).permute(2, 0, 1),
            "boxes_xyxy": torch.from_numpy(
                np.ascontiguousarray(sample.boxes_xyxy, dtype=np.float32)
            ),
            "labels": torch.from_numpy(np.ascontiguousarray(sample.labels, dtype=np.int64)),
            "image_id": rec.image_id,
            "orig_size": (rec.height, rec.width),
            "file_name": rec.path,
        }


def collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the batch as a list of per-image dicts (images have different sizes)."""
    return batch


def repeat_factors(records: DetectionRecords, threshold: float) -> np.ndarray:
    """LVIS repeat-factor sampling: r(image) = max over its classes c of max(1, sqrt(threshold / f_c)).

    f_c is the fraction of training images that contain class c (computed from the loaded annotations).
    """
    num_images = max(len(records.images), 1)
    counts = np.zeros(len(records.label_to_category_id), dtype=np.float64)
    for rec in records.images:
        counts[np.unique(rec.labels)] += 1
    freq = counts / num_images
    class_factor = np.maximum(1.0, np.sqrt(threshold / np.maximum(freq, 1e-12)))
    return np.array(
        [class_factor[np.unique(r.labels)].max() if len(r.labels) else 1.0 for r in records.images]
    )


class TrainSampler(Sampler):
    """Epoch-based, seeded, optionally repeat-factor, distributed sampler yielding ``(index, sample_seed)``.

    The global order of epoch ``e`` depends only on ``(seed, e)``; rank ``r`` of ``w`` takes every w-th entry,
    truncated so every rank gets the same number of full batches. ``sample_seed`` depends on
    ``(seed, e, global position)``, so augmentations do not depend on the number of workers.
    ``set_epoch(e, start_batch)`` resumes in the middle of an epoch without decoding skipped images.
    """

    def __init__(
        self,
        size: int,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        factors: np.ndarray | None = None,
    ) -> None:
        if size < batch_size * world_size:
            raise ValueError(
                f"the training set has {size} images, fewer than the global batch {batch_size * world_size}"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.factors = rank, world_size, factors
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _global_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        indices = np.arange(self.size)
        if self.factors is not None:  # stochastic rounding of the repeat factors
            reps = np.floor(self.factors + rng.random(self.size)).astype(np.int64)
            indices = np.repeat(indices, reps)
        return indices[rng.permutation(len(indices))]

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        order = self._global_order(self.epoch if epoch is None else epoch)
        return len(order) // (self.batch_size * self.world_size)

    def _positions(self) -> tuple[np.ndarray, np.ndarray]:
        order = self._global_order(self.epoch)
        per_rank = len(order) // (self.batch_size * self.world_size) * self.batch_size
        positions = np.arange(self.rank, per_rank * self.world_size, self.world_size)
        positions = positions[self.start_batch * self.batch_size :]
        return order[positions], positions

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, positions = self._positions()
        for index, pos in zip(indices.tolist(), positions.tolist()):
            seed = int(np.random.SeedSequence([self.seed, self.epoch, pos]).generate_state(1)[0])
            yield index, seed

    def __len__(self) -> int:
        return len(self._positions()[0])


class InferenceSampler(Sampler):
    """Contiguous shard of ``range(size)`` for this rank (no padding, no duplicates)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        shard = (size + world_size - 1) // world_size
        self.indices = list(range(min(rank * shard, size), min((rank + 1) * shard, size)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def subset_gt(json_path: str | os.PathLike, image_ids: Sequence[int]) -> dict:
    """The annotation JSON restricted to ``image_ids`` (used when evaluating on a subset)."""
    with open(json_path) as f:
        data = json.load(f)
    keep = set(int(i) for i in image_ids)
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data.get("annotations", []) if a["image_id"] in keep]
    return data


def first_images(records: DetectionRecords, limit: int | None) -> DetectionRecords:
    """Records limited to the first ``limit`` images (all when None)."""
    if limit is None or limit >= len(records.images):
        return records
    return DetectionRecords(
        records.json_path,
        records.images[:limit],
        records.label_to_category_id,
        records.category_names,
        records.class_image_counts,
        records.issues,
    )


def resolve_paths(data_cfg: Any) -> dict[str, str | None]:
    """Dataset paths from the config; the synthetic dataset is generated on first use."""
    keys = ("train_json", "train_images", "val_json", "val_images")
    if data_cfg.synthetic:
        from tasks.detect.synthetic import ensure_synthetic_dataset

        given = [k for k in keys if getattr(data_cfg, k) is not None]
        if given:
            raise ValueError(
                f"data.synthetic=true conflicts with data.{given[0]}; set data.synthetic=false to use your own data"
            )
        return ensure_synthetic_dataset(  # type: ignore[return-value]
            data_cfg.synthetic_root, data_cfg.synthetic_spec
        )
    paths = {k: getattr(data_cfg, k) for k in keys}
    for key, value in paths.items():
        if value is not None and not Path(value).exists():
            raise ValueError(f"data.{key}: path '{value}' does not exist")
    return paths
