"""Pascal VOC -> COCO conversion (used by ``voc2coco.py`` and by ``data.resolve_paths`` for VOC configs).

Layout read (standard VOC)::

    VOC_ROOT/Annotations/<id>.xml   VOC_ROOT/JPEGImages/<id>.jpg   VOC_ROOT/ImageSets/Main/<split>.txt

Coordinates: VOC boxes are 1-based inclusive pixel indices; like detectron2's VOC loader they become the
COCO box ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]`` (``xmin=1, xmax=W`` covers the whole
image). Boxes with ``xmax <= xmin`` or ``ymax <= ymin`` in the file are *degenerate* (a point or a line,
an annotation error) and are dropped with one counted warning naming the files. Boxes reaching outside
the image are clipped (counted). ``difficult`` objects are kept (detectron2's choice for training) unless
``include_difficult=False``.

Class order: given (``classes``), else the order of first appearance reading the split's XML files in
split-list order. Category ids are ``1..K`` in that order, image ids ``1..N`` in split-list order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)


@dataclass
class VocObject:
    """One ``<object>``: class name, ``boxes_xyxy`` as written in the file (1-based), difficult flag."""

    name: str
    xyxy: tuple[float, float, float, float]
    difficult: bool


@dataclass
class VocImage:
    """One annotation file."""

    xml_path: str
    file_name: str
    width: int
    height: int
    objects: list[VocObject] = field(default_factory=list)


@dataclass
class VocReport:
    """What the conversion dropped or changed (``degenerate``: ``"<xml file> object <i>"`` entries)."""

    degenerate: list[str] = field(default_factory=list)
    clipped: int = 0
    unknown_class: list[str] = field(default_factory=list)
    difficult_skipped: int = 0


def read_split(root: str | os.PathLike, split: str) -> list[str]:
    """Image ids listed in ``ImageSets/Main/<split>.txt`` (first token of each non-empty line)."""
    path = Path(root) / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"VOC split file {path} not found (expected VOC_ROOT/ImageSets/Main/)"
        )
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"VOC split file {path} lists no images")
    return ids


def _number(node: ET.Element, tag: str, where: str) -> float:
    text = node.findtext(tag)
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: <{tag}> is {text!r}, not a number") from None


def parse_voc_xml(xml_path: str | os.PathLike, image_dir: str | os.PathLike) -> VocImage:
    """Parses one VOC annotation file; the image size falls back to the image header when the XML
    has no usable ``<size>``. Raises ValueError naming the file (and object) on malformed content."""
    xml_path = str(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        raise ValueError(f"{xml_path}: cannot parse VOC XML: {e}") from e
    stem = Path(xml_path).stem
    file_name = root.findtext("filename") or f"{stem}.jpg"
    if not (Path(image_dir) / file_name).is_file() and (Path(image_dir) / f"{stem}.jpg").is_file():
        file_name = f"{stem}.jpg"  # some datasets carry a stale <filename>; the id is authoritative
    width = height = 0
    size = root.find("size")
    if size is not None:
        width = int(_number(size, "width", f"{xml_path} <size>"))
        height = int(_number(size, "height", f"{xml_path} <size>"))
    if width <= 0 or height <= 0:
        image_path = Path(image_dir) / file_name
        try:
            with Image.open(image_path) as im:
                width, height = im.size
        except OSError as e:
            raise ValueError(f"{xml_path}: no <size> and image {image_path} unreadable: {e}") from e
    image = VocImage(xml_path, file_name, width, height)
    for i, obj in enumerate(root.findall("object")):
        where = f"{xml_path} object {i}"
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise ValueError(f"{where}: missing <name> or <bndbox>")
        xyxy = tuple(_number(box, k, where) for k in ("xmin", "ymin", "xmax", "ymax"))
        difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
        image.objects.append(VocObject(name, xyxy, difficult))  # type: ignore[arg-type]
    return image


def class_names_in_file_order(images: Sequence[VocImage]) -> list[str]:
    """Class names in order of first appearance."""
    names: dict[str, None] = {}
    for image in images:
        for obj in image.objects:
            names.setdefault(obj.name, None)
    return list(names)


def load_voc_split(
    root: str | os.PathLike, split: str, *, image_dir: str = "JPEGImages"
) -> list[VocImage]:
    """Parses every annotation file of a split (in split-list order)."""
    ann_dir, img_dir = Path(root) / "Annotations", Path(root) / image_dir
    return [
        parse_voc_xml(ann_dir / f"{image_id}.xml", img_dir) for image_id in read_split(root, split)
    ]


def _coco_box(obj: VocObject, width: int, height: int, report: VocReport) -> list[float] | None:
    x1, y1, x2, y2 = obj.xyxy
    x1, y1 = x1 - 1.0, y1 - 1.0  # 1-based inclusive -> continuous coordinates
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        report.clipped += 1
        if cx2 <= cx1 or cy2 <= cy1:
            return None
    return [cx1, cy1, cx2 - cx1, cy2 - cy1]


def voc_to_coco(
    images: Sequence[VocImage],
    *,
    classes: Sequence[str] | None = None,
    include_difficult: bool = True,
    source: str = "",
) -> tuple[dict, VocReport]:
    """COCO instances dict from parsed VOC images, and what was dropped (warned about once, by file)."""
    names = list(classes) if classes is not None else class_names_in_file_order(images)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate class names in {names}")
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    report = VocReport()
    coco_images, annotations = [], []
    for image_id, image in enumerate(images, start=1):
        coco_images.append(
            {
                "id": image_id,
                "file_name": image.file_name,
                "width": image.width,
                "height": image.height,
            }
        )
        for i, obj in enumerate(image.objects):
            where = f"{Path(image.xml_path).name} object {i}"
            x1, y1, x2, y2 = obj.xyxy
            if x2 <= x1 or y2 <= y1:
                report.degenerate.append(f"{where} {list(obj.xyxy)}")
                continue
            if obj.name not in cat_id:
                report.unknown_class.append(f"{where} ({obj.name!r})")
                continue
            if obj.difficult and not include_difficult:
                report.difficult_skipped += 1
                continue
            box = _coco_box(obj, image.width, image.height, report)
            if box is None:
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_id[obj.name],
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    _warn(report, source)
    categories = [{"id": cat_id[n], "name": n, "supercategory": "none"} for n in names]
    info = {"description": f"converted from Pascal VOC {source}".strip()}
    return {
        "info": info,
        "images": coco_images,
        "annotations": annotations,
        "categories": categories,
    }, report


def _warn(report: VocReport, source: str) -> None:
    prefix = f"{source}: " if source else ""
    if report.degenerate:
        logger.warning(
            "%s%d degenerate boxes (xmax <= xmin or ymax <= ymin) dropped: %s",
            prefix,
            len(report.degenerate),
            "; ".join(report.degenerate),
        )
    if report.unknown_class:
        logger.warning(
            "%s%d objects of classes not in the class list skipped: %s",
            prefix,
            len(report.unknown_class),
            "; ".join(report.unknown_class),
        )
    if report.clipped:
        logger.warning("%s%d boxes reaching outside the image clipped", prefix, report.clipped)
    if report.difficult_skipped:
        logger.info("%s%d difficult objects skipped", prefix, report.difficult_skipped)


def convert_voc(
    root: str | os.PathLike,
    split: str,
    *,
    classes: Sequence[str] | None = None,
    include_difficult: bool = True,
    image_dir: str = "JPEGImages",
) -> tuple[dict, VocReport]:
    """``VOC_ROOT`` + split -> (COCO dict, report). Image file names are relative to ``VOC_ROOT/image_dir``."""
    images = load_voc_split(root, split, image_dir=image_dir)
    return voc_to_coco(
        images, classes=classes, include_difficult=include_difficult, source=f"{root} ({split})"
    )


def voc_split_file(path: str | os.PathLike | None) -> tuple[Path, str] | None:
    """``(VOC_ROOT, split)`` when ``path`` names ``VOC_ROOT/ImageSets/Main/<split>.txt``, else None."""
    if path is None:
        return None
    p = Path(path)
    if p.suffix == ".txt" and p.parent.name == "Main" and p.parent.parent.name == "ImageSets":
        return p.parent.parent.parent, p.stem
    return None


_CONVERTED: dict[str, dict[str, str | None]] = {}  # one conversion (and one warning) per process


def coco_files_from_voc(
    paths: dict[str, str | None], classes: Sequence[str] | None, cache_dir: str | os.PathLike
) -> dict[str, str | None]:
    """Data paths with every ``*_json`` naming a VOC split file replaced by a COCO file written (atomically,
    only when its content changes) under ``cache_dir``; ``*_images`` default to ``VOC_ROOT/JPEGImages``.

    Class order (shared by both splits, so their labels agree): ``classes`` when given, else the order of
    first appearance over the training split, then the validation split."""
    from tasks.common.checkpoint import atomic_write_text

    key = json.dumps([sorted(paths.items()), classes, str(cache_dir)])
    done = _CONVERTED.get(key)
    if done is not None and all(
        Path(v).is_file() for k, v in done.items() if k.endswith("_json") and v
    ):
        return dict(done)
    splits = {k: voc_split_file(paths[f"{k}_json"]) for k in ("train", "val")}
    parsed = {k: load_voc_split(*split) for k, split in splits.items() if split is not None}
    names = (
        list(classes)
        if classes is not None
        else class_names_in_file_order([im for k in ("train", "val") for im in parsed.get(k, [])])
    )
    out = dict(paths)
    for k, images in parsed.items():
        root, split = splits[k]  # type: ignore[misc]
        coco, _ = voc_to_coco(images, classes=names, source=f"{root} ({split})")
        tag = hashlib.sha1(f"{root.resolve()}|{split}|{names}".encode()).hexdigest()[:10]
        target = Path(cache_dir) / f"{root.name}_{split}_{tag}.json"
        text = json.dumps(coco)
        if not target.is_file() or target.read_text() != text:
            atomic_write_text(target, text)
        out[f"{k}_json"] = str(target)
        if out[f"{k}_images"] is None:
            out[f"{k}_images"] = str(root / "JPEGImages")
    _CONVERTED[key] = dict(out)
    return out
