"""COCO-format and LVIS v1 detection datasets, samplers and collation.

A dataset keeps only compact per-image records (path, size, ``boxes_xyxy`` float32, contiguous ``labels``);
images are decoded lazily in ``__getitem__`` (i.e. in the DataLoader workers), so memory stays bounded
for large datasets.

Annotation hygiene (each reported once per JSON file as a counted warning that names the file and the
first annotation ids of each kind): crowd annotations are dropped; boxes with non-positive width/height,
unknown categories, unknown images or malformed ``bbox`` entries (null, not 4 values, a value that is not a
finite JSON number: numeric strings are refused, not coerced) are skipped; boxes reaching outside the image
are clipped to it (and skipped when nothing is left). Images without annotations are kept (official
``FILTER_EMPTY_ANNOTATIONS: False``). :func:`subset_gt` drops the same unusable annotations from the
evaluation ground truth, so training and evaluation see the same boxes.

Errors naming the file and the entry (``images[i]``, ``annotations[i]``): empty / truncated / non-object
JSON, image entries whose ``id`` / ``height`` / ``width`` are not positive JSON integers, duplicate image
ids, annotation entries that are not objects, and image paths (``file_name``, LVIS ``coco_url``) that leave
the image root (absolute paths only with ``allow_absolute_paths=True``).

Images are checked when a :class:`DetectionDataset` is built, before any training step (header reads:
missing, unreadable, truncated, wrong-size files): an error listing them, or with ``image_check="skip"``
a counted warning naming them (see ``data_checks.py``).

VOC: a ``data.train_json`` / ``data.val_json`` naming a ``VOC_ROOT/ImageSets/Main/<split>.txt`` file is
converted to COCO on the fly (``voc.py``; cached under ``outputs/voc_coco/``), images default to
``VOC_ROOT/JPEGImages``.

Contiguous labels: category ids sorted ascending map to ``0..K-1``; ``label_to_category_id[label]`` maps back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tasks.detect import data_checks as checks
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
    issue_ids: dict[str, list] = field(default_factory=dict)  # first annotation ids of each issue


def _image_path(entry: dict, image_root: str, fmt: str, where: str, allow_absolute: bool) -> str:
    if "file_name" in entry:
        name = entry["file_name"]
        if fmt == "lvis" and isinstance(name, str) and name.startswith("COCO_"):
            name = name[-16:]  # LVIS v0.5 names like COCO_val2014_000000397133.jpg
        return checks.safe_join(image_root, name, where, allow_absolute=allow_absolute)
    if "coco_url" in entry:  # LVIS v1: image_root is the COCO root holding train2017/ and val2017/
        url = entry["coco_url"]
        if not isinstance(url, str):
            raise ValueError(f"{where}: 'coco_url' must be a string, got {url!r}")
        return checks.safe_join(image_root, "/".join(url.split("/")[-2:]), where)
    raise ValueError(f"{where}: image entry has neither 'file_name' nor 'coco_url'")


def _image_sizes(json_path: str, entries: Any) -> dict[int, tuple[int, int]]:
    """{image id: (height, width)}; ValueError naming ``images[i]`` on a bad or duplicate entry."""
    if not isinstance(entries, list):
        raise ValueError(f"{json_path}: 'images' must be a list, got {type(entries).__name__}")
    sizes: dict[int, tuple[int, int]] = {}
    for i, entry in enumerate(entries):
        where = f"{json_path}: images[{i}]"
        image_id = checks.image_int(entry, "id", where, positive=False)
        where = f"{where} (id={image_id})"
        height = checks.image_int(entry, "height", where, positive=True)
        width = checks.image_int(entry, "width", where, positive=True)
        if image_id in sizes:
            raise ValueError(f"{where}: duplicate image id")
        sizes[image_id] = (height, width)
    return sizes


def load_detection_json(
    json_path: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    fmt: str = "coco",
    label_to_category_id: Sequence[int] | None = None,
    allow_absolute_paths: bool = False,
) -> DetectionRecords:
    """Parse a COCO-format (or LVIS v0.5 / v1) instances JSON into compact records.

    Args:
        json_path: annotation file.
        image_root: folder the image file names are relative to (LVIS v1: the COCO root).
        fmt: ``"coco"`` or ``"lvis"``.
        label_to_category_id: reuse another split's label mapping (must hold the same category ids).
        allow_absolute_paths: accept absolute ``file_name`` entries (refused by default, like any
            path leaving ``image_root``).

    Returns:
        :class:`DetectionRecords`; bad annotations are counted in ``issues`` and reported in one warning.
    """
    json_path, image_root = str(json_path), str(image_root)
    data = checks.read_json_object(json_path)
    for key in ("images", "categories"):
        if key not in data:
            raise ValueError(f"{json_path}: missing top-level key '{key}'")
    categories = _categories(json_path, data["categories"])
    cat_ids = [int(c["id"]) for c in categories]
    if label_to_category_id is not None and sorted(label_to_category_id) != cat_ids:
        raise ValueError(f"{json_path}: category ids differ from the training annotation file's")
    cat_to_label = {c: i for i, c in enumerate(cat_ids)}
    sizes = _image_sizes(json_path, data["images"])
    paths = [
        _image_path(
            entry,
            image_root,
            fmt,
            f"{json_path}: images[{i}] (id={entry['id']})",
            allow_absolute_paths,
        )
        for i, entry in enumerate(data["images"])
    ]
    issues: Counter = Counter()
    issue_ids: dict[str, list] = {}
    per_image: dict[int, list[tuple[list[float], int]]] = {image_id: [] for image_id in sizes}
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{json_path}: 'annotations' must be a list")
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise ValueError(
                f"{json_path}: annotations[{i}] is {type(ann).__name__}, not an object"
            )
        parsed = _parse_annotation(ann, sizes, cat_to_label, issues)
        if isinstance(parsed, str):
            issue_ids.setdefault(parsed, []).append(ann.get("id", f"annotations[{i}]"))
        elif parsed is not None:
            per_image[ann["image_id"]].append(parsed)
    images = []
    for entry, path in zip(data["images"], paths):
        anns = per_image[entry["id"]]
        boxes = np.array([a[0] for a in anns], dtype=np.float32).reshape(-1, 4)
        labels = np.array([a[1] for a in anns], dtype=np.int64)
        height, width = sizes[entry["id"]]
        images.append(ImageRecord(path, entry["id"], height, width, boxes, labels))
    counts = _class_image_counts(categories, images)
    _warn_issues(json_path, issues, issue_ids)
    names = [str(c.get("name", c["id"])) for c in categories]
    return DetectionRecords(json_path, images, cat_ids, names, counts, issues, issue_ids)


def _categories(json_path: str, categories: Any) -> list[dict]:
    if not isinstance(categories, list):
        raise ValueError(f"{json_path}: 'categories' must be a list")
    for i, c in enumerate(categories):
        checks.image_int(c, "id", f"{json_path}: categories[{i}]", positive=False)
    return sorted(categories, key=lambda c: c["id"])


def _warn_issues(json_path: str, issues: Counter, issue_ids: dict[str, list]) -> None:
    problems = {what: n for what, n in issues.items() if what != CROWD}
    if not problems:
        return
    parts = []
    for what, n in sorted(problems.items()):
        ids = issue_ids.get(what, [])
        more = ", ..." if len(ids) > 5 else ""
        parts.append(f"{n} {what} (annotation ids {', '.join(map(str, ids[:5]))}{more})")
    logger.warning("%s: annotation problems handled: %s", json_path, "; ".join(parts))


def _valid_bbox(bbox: Any) -> bool:
    """4 finite JSON numbers (bools, strings and nulls are not numbers)."""
    return (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in bbox
        )
    )


def _parse_annotation(
    ann: dict, sizes: dict, cat_to_label: dict[int, int], issues: Counter
) -> tuple[list[float], int] | str:
    """Validate one annotation -> (clipped xyxy box, label), or the issue (a key of ``issues``, counted)
    for which it was skipped."""
    issue, parsed = _check_annotation(ann, sizes, cat_to_label)
    if issue is not None:
        issues[issue] += 1
    return parsed if parsed is not None else issue  # type: ignore[return-value]


def _check_annotation(
    ann: dict, sizes: dict, cat_to_label: dict[int, int]
) -> tuple[str | None, tuple[list[float], int] | None]:
    if ann.get("iscrowd", 0):
        return CROWD, None
    image_id, category_id = ann.get("image_id"), ann.get("category_id")
    if isinstance(image_id, bool) or image_id not in sizes:
        return "annotations of unknown images skipped", None
    if isinstance(category_id, bool) or category_id not in cat_to_label:
        return "annotations with unknown category skipped", None
    bbox = ann.get("bbox")
    if not _valid_bbox(bbox):
        return "malformed bbox entries skipped", None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return "boxes with non-positive width/height skipped", None
    height, width = sizes[image_id]
    box = [
        min(max(x, 0.0), width),
        min(max(y, 0.0), height),
        min(max(x + w, 0.0), width),
        min(max(y + h, 0.0), height),
    ]
    label = cat_to_label[category_id]
    if box == [x, y, x + w, y + h]:
        return None, (box, label)
    if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
        return "boxes entirely outside the image skipped", None
    return "boxes reaching outside the image clipped", (box, label)


def _class_image_counts(categories: list[dict], images: list[ImageRecord]) -> list[int]:
    if all("image_count" in c for c in categories):
        return [int(c["image_count"]) for c in categories]
    counts = np.zeros(len(categories), dtype=np.int64)
    for rec in images:
        counts[np.unique(rec.labels)] += 1
    return counts.tolist()


def check_images(records: DetectionRecords, mode: str = "error") -> DetectionRecords:
    """Finds missing, unreadable, truncated and wrong-size images up front (header reads only).

    ``mode="error"``: ValueError naming the annotation file, every bad image (id, path) and the problem.
    ``mode="skip"``: records without those images, and one counted warning naming them. Do not skip
    images of an evaluation split: its ground truth would still count their boxes.
    """
    bad = []
    for rec in records.images:
        problem = checks.image_problem(rec.path, rec.width, rec.height)
        if problem is not None:
            bad.append((rec, problem))
    if not bad:
        return records
    listing = "; ".join(f"id={r.image_id} {r.path}: {p}" for r, p in bad[:20])
    listing += f"; ... ({len(bad) - 20} more)" if len(bad) > 20 else ""
    if mode == "error":
        raise ValueError(
            f"{records.json_path}: {len(bad)} of {len(records.images)} images cannot be "
            f"used: {listing} (image_check='skip' drops them)"
        )
    logger.warning("%s: %d images skipped: %s", records.json_path, len(bad), listing)
    dropped = {id(r) for r, _ in bad}
    return dataclasses.replace(records, images=[r for r in records.images if id(r) not in dropped])


class DetectionDataset(Dataset):
    """Lazily decoded detection dataset.

    ``dataset[i]`` or ``dataset[(i, seed)]`` (the seed makes the random augmentation reproducible) returns a
    dict: ``image`` uint8 (3, H, W) RGB after the transform, ``boxes_xyxy`` float32 (M, 4) absolute pixels of
    that transformed image, ``labels`` int64 (M,), ``image_id``, ``orig_size`` (H0, W0) and ``file_name``.
    """

    def __init__(
        self, records: DetectionRecords, transform: Compose, *, image_check: str = "error"
    ) -> None:
        if image_check not in ("error", "skip", "off"):
            raise ValueError(f"image_check must be 'error', 'skip' or 'off', got {image_check!r}")
        self.records = records if image_check == "off" else check_images(records, image_check)
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


def subset_gt(json_path: str | os.PathLike, image_ids: Sequence[int]) -> dict:
    """The annotation JSON restricted to ``image_ids`` (used when evaluating on a subset), without the
    annotations the loader cannot use (malformed bbox, non-positive size, unknown image or category):
    counted in a warning naming the file. Crowd annotations stay (they are ignore regions)."""
    json_path = str(json_path)
    data = checks.read_json_object(json_path)
    keep = set(int(i) for i in image_ids)
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    cat_to_label = {c["id"]: i for i, c in enumerate(data.get("categories", []))}
    kept, dropped = [], Counter()
    for ann in data.get("annotations", []):
        if not isinstance(ann, dict) or ann.get("image_id") not in keep:
            continue
        issue, _ = _check_annotation(ann, sizes, cat_to_label)
        if issue is None or issue in (CROWD, "boxes reaching outside the image clipped"):
            kept.append(ann)
        else:
            dropped[issue] += 1
    data["annotations"] = kept
    if dropped:
        logger.warning(
            "%s: %d ground-truth annotations left out of the evaluation: %s",
            json_path,
            sum(dropped.values()),
            ", ".join(f"{n} {what}" for what, n in sorted(dropped.items())),
        )
    return data


def first_images(records: DetectionRecords, limit: int | None) -> DetectionRecords:
    """Records limited to the first ``limit`` images (all when None)."""
    if limit is None or limit >= len(records.images):
        return records
    return dataclasses.replace(records, images=records.images[:limit])


VOC_CACHE = Path("outputs/voc_coco")  # COCO files converted from VOC configs (relative to the cwd)


def resolve_paths(data_cfg: Any) -> dict[str, str | None]:
    """Dataset paths from the config; the synthetic dataset is generated on first use, VOC splits
    (``data.*_json`` = ``VOC_ROOT/ImageSets/Main/<split>.txt``) are converted to COCO files."""
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
    from tasks.detect import voc

    if voc.voc_split_file(paths["train_json"]) or voc.voc_split_file(paths["val_json"]):
        paths = voc.coco_files_from_voc(paths, getattr(data_cfg, "voc_classes", None), VOC_CACHE)
    for key, value in paths.items():
        if value is not None and not Path(value).exists():
            raise ValueError(f"data.{key}: path '{value}' does not exist")
    return paths
