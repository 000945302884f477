"""Segmentation data: dataset descriptions, frame listings, label mapping, augmentation, torch Datasets.

Images come out as float (3, H, W) in [-1, 1]; labels as int64 (H, W) with values in [0, K) or the dataset's
ignore index. Frames are listed up front (paths only) and decoded lazily by DataLoader workers, so memory stays
bounded whatever the number of images (Cityscapes ``train_extra``: ~20k frames).

Layouts:

* **cityscapes**: ``root/leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png`` with
  ``root/gtFine/<split>/<city>/<frame>_gtFine_labelIds.png`` (labelIds -> trainIds, 19 classes, 255 ignore);
  ``*_gtFine_instanceIds.png`` is used for iIoU when present.
* **camvid** (SegNet version): ``root/<split>.txt`` lines ``image label`` (11 classes, 11 = void = ignore).
* **folder** (also the generated default): ``root/<split>/images/<name>.<ext>`` with
  ``root/<split>/masks/<name>.png`` holding class ids 0..K-1 (``data.ignore_index`` = ignore).
* unlabelled pretraining images: any folders, searched recursively.

Bad input: a label whose size differs from its image raises naming both files; label values outside the known
ids become ignore and are counted (:class:`LabelAudit` reports them in one warning); unreadable image files are
skipped with one counted warning naming them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from tasks.common.camvid import CAMVID_CLASSES, CAMVID_IGNORE, CAMVID_PALETTE, read_pair_list
from tasks.segment.transforms import augment, eval_transform

__all__ = [
    "IMAGE_SUFFIXES",
    "DatasetInfo",
    "Frame",
    "LabelAudit",
    "SegmentationDataset",
    "UnlabeledDataset",
    "augment",
    "camvid_frames",
    "camvid_info",
    "cityscapes_frames",
    "cityscapes_info",
    "collate",
    "eval_transform",
    "folder_frames",
    "folder_info",
    "image_files",
    "load_image",
    "load_label",
    "readable_images",
]

logger = logging.getLogger("diffvision.segment.data")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class DatasetInfo:
    """Classes of a labelled dataset and how raw label values map to training ids.

    ``lut[v]`` is the training id of raw label value v (0..65535): a class in [0, K), ``ignore_index`` for
    known void values, or -1 for values that are not known ids (mapped to ignore and counted).
    """

    name: str
    class_names: tuple[str, ...]
    ignore_index: int
    lut: np.ndarray
    palette: tuple[tuple[int, int, int], ...]
    # training id -> id written by predict.py (Cityscapes: labelIds); None = identity
    export_ids: tuple[int, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Frame:
    """One image on disk, with its label (and Cityscapes instance map) when labelled."""

    name: str  # unique key, the image path relative to the dataset root
    image: Path
    label: Path | None = None
    instances: Path | None = None


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(65536, -1, dtype=np.int64)
    for raw, train in mapping.items():
        lut[raw] = train
    return lut


def _palette(k: int, seed: int = 3) -> tuple[tuple[int, int, int], ...]:
    rng = np.random.default_rng(seed)
    return tuple(tuple(int(c) for c in rng.integers(40, 256, 3)) for _ in range(k))


def cityscapes_info() -> DatasetInfo:
    """19 trainId classes; every labelId 0..33 is known (non-evaluated ones -> 255)."""
    from evaluation.cityscapes import LABELS

    labels = [lb for lb in LABELS if lb.id >= 0]
    train = sorted(
        (lb for lb in labels if lb.train_id not in (255, -1)), key=lambda lb: lb.train_id
    )
    palette = (
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    )  # cityscapesScripts' colours
    return DatasetInfo(
        name="cityscapes",
        class_names=tuple(lb.name for lb in train),
        ignore_index=255,
        lut=_lut({lb.id: (lb.train_id if lb.train_id != -1 else 255) for lb in labels}),
        palette=palette,
        export_ids=tuple(lb.id for lb in train),
    )


def camvid_info() -> DatasetInfo:
    """SegNet CamVid: 11 classes 0..10, 11 = void (ignore)."""
    return DatasetInfo(
        "camvid", CAMVID_CLASSES, CAMVID_IGNORE, _lut({i: i for i in range(12)}), CAMVID_PALETTE
    )


def folder_info(
    num_classes: int,
    class_names: Sequence[str] = (),
    ignore_index: int = 255,
    *,
    name: str = "folder",
) -> DatasetInfo:
    """Masks hold class ids 0..K-1 plus ``ignore_index``."""
    if num_classes < 1:
        raise ValueError("data.num_classes must be set (>= 1) for dataset 'folder'")
    names = tuple(class_names) or tuple(f"class_{k}" for k in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(
            f"data.class_names has {len(names)} names for data.num_classes={num_classes}"
        )
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"data.ignore_index={ignore_index} collides with a class id (< {num_classes})"
        )
    mapping = {i: i for i in range(num_classes)} | {ignore_index: ignore_index}
    return DatasetInfo(name, names, ignore_index, _lut(mapping), _palette(num_classes))


# ----------------------------------------------------------------------------------------------- listings
def image_files(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def readable_images(paths: Sequence[Path], *, what: str = "images") -> list[Path]:
    """The paths whose header Pillow can read; the others are skipped with one counted warning naming them."""
    ok, bad = [], []
    for p in paths:
        try:
            with Image.open(p) as im:  # reads the header only (cheap for 20k files)
                _ = im.size
            ok.append(p)
        except Exception as err:  # noqa: BLE001 (any decoder error means unreadable)
            bad.append(f"{p} ({type(err).__name__})")
    if bad:
        shown = "; ".join(bad[:10]) + (f"; ... {len(bad) - 10} more" if len(bad) > 10 else "")
        logger.warning("skipped %d unreadable %s of %d: %s", len(bad), what, len(paths), shown)
    return ok


def cityscapes_frames(root: str | Path, split: str, *, labelled: bool = True) -> list[Frame]:
    """Frames of ``leftImg8bit/<split>`` (with their gtFine labelIds / instanceIds when ``labelled``)."""
    root = Path(root)
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    if not images:
        raise FileNotFoundError(f"no */*_leftImg8bit.png under {root / 'leftImg8bit' / split}")
    frames = []
    for img in images:
        name = str(img.relative_to(root))
        if not labelled:
            frames.append(Frame(name, img))
            continue
        stem = img.name[: -len("_leftImg8bit.png")]
        gt_dir = root / "gtFine" / split / img.parent.name
        label = gt_dir / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise FileNotFoundError(f"label file {label} for image {img} is missing")
        inst = gt_dir / f"{stem}_gtFine_instanceIds.png"
        frames.append(Frame(name, img, label, inst if inst.is_file() else None))
    return frames


def camvid_frames(root: str | Path, split: str) -> list[Frame]:
    """Frames listed in ``root/<split>.txt`` (lines ``image label`` relative to root, never leaving it)."""
    return [Frame(name, image, label) for name, image, label in read_pair_list(root, split)]


def folder_frames(root: str | Path, split: str) -> list[Frame]:
    """``root/<split>/images/*`` with masks ``root/<split>/masks/<stem>.png`` (error naming a missing one)."""
    base = Path(root) / split
    images = readable_images(image_files(base / "images"), what=f"images in {base / 'images'}")
    frames = []
    for img in images:
        mask = base / "masks" / f"{img.stem}.png"
        if not mask.is_file():
            raise FileNotFoundError(f"mask {mask} for image {img} is missing")
        frames.append(Frame(str(img.relative_to(Path(root))), img, mask))
    return frames


# ----------------------------------------------------------------------------------------------- decoding
def load_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def load_label(
    frame: Frame, image_hw: tuple[int, int], info: DatasetInfo
) -> tuple[np.ndarray, np.ndarray, int]:
    """(raw (H, W) int64, mapped (H, W) int64, number of pixels with unknown values mapped to ignore)."""
    assert frame.label is not None
    with Image.open(frame.label) as im:
        raw = np.asarray(im).astype(np.int64)
    if raw.ndim != 2:
        raise ValueError(
            f"label {frame.label} has shape {raw.shape}; expected a single-channel PNG"
        )
    if raw.shape != tuple(image_hw):
        raise ValueError(
            f"label {frame.label} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image {frame.image} is "
            f"{image_hw[1]}x{image_hw[0]}"
        )
    mapped = info.lut[np.clip(raw, 0, len(info.lut) - 1)]
    unknown = mapped < 0
    n_unknown = int(unknown.sum())
    if n_unknown:
        mapped = np.where(unknown, info.ignore_index, mapped)
    return raw, mapped, n_unknown


@dataclass
class LabelAudit:
    """Counts label pixels with unknown values (mapped to ignore), once per file however often it is read;
    :meth:`report` logs one warning with the totals."""

    per_file: dict[str, int] = field(default_factory=dict)

    def add(self, batch: dict[str, Any]) -> None:
        for name, n in zip(batch["name"], batch["unknown_pixels"].tolist()):
            if n:
                self.per_file[name] = int(n)

    @property
    def pixels(self) -> int:
        return sum(self.per_file.values())

    def report(self, what: str) -> None:
        if self.per_file:
            first = sorted(self.per_file)[:5]
            logger.warning(
                "%s: %d label pixels in %d files held values outside the known ids and were mapped "
                "to ignore (e.g. %s)",
                what,
                self.pixels,
                len(self.per_file),
                ", ".join(first),
            )


# ----------------------------------------------------------------------------------------------- datasets
class SegmentationDataset(Dataset):
    """Labelled frames. Indexed by ``(index, sample_seed)`` (training, random augmentation) or ``index``
    (evaluation: the full-resolution label is kept; the image is scaled by ``resize`` and padded).

    Items: ``image`` (3, H, W), ``label`` (H, W) training ids, ``name``, ``unknown_pixels``; evaluation adds
    ``valid_hw`` and, for Cityscapes, ``label_ids`` (raw labelIds) and ``instances`` when available.
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        info: DatasetInfo,
        *,
        train: bool,
        resize: float = 1.0,
        scale_range: tuple[float, float] = (0.5, 2.0),
        crop_hw: tuple[int, int] = (512, 1024),
        flip: bool = True,
    ) -> None:
        missing = [f.name for f in frames if f.label is None]
        if missing:
            raise ValueError(f"frames without labels: {missing[:5]}")
        self.frames, self.info, self.train = list(frames), info, train
        self.resize, self.scale_range, self.crop_hw, self.flip = resize, scale_range, crop_hw, flip

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        frame = self.frames[index]
        image = load_image(frame.image)
        raw, label, unknown = load_label(frame, image.shape[:2], self.info)
        item: dict[str, Any] = {"name": frame.name, "unknown_pixels": unknown}
        if self.train:
            img, lab = augment(
                image,
                label,
                rng=np.random.default_rng(seed),
                resize=self.resize,
                scale_range=self.scale_range,
                crop_hw=self.crop_hw,
                flip=self.flip,
                ignore_index=self.info.ignore_index,
            )
            item.update(image=img, label=lab)
            return item
        img, valid = eval_transform(image, resize=self.resize)
        item.update(image=img, label=torch.from_numpy(label), valid_hw=valid)
        if self.info.name == "cityscapes":
            item["label_ids"] = torch.from_numpy(raw)
            if frame.instances is not None:
                with Image.open(frame.instances) as im:
                    item["instances"] = torch.from_numpy(np.asarray(im).astype(np.int64))
        return item


class UnlabeledDataset(Dataset):
    """Images for denoising pretraining, indexed by ``(index, sample_seed)``: random scale / crop / flip.

    A file that fails to decode (truncated after the header check) is replaced by the next file, with a
    warning naming it.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        resize: float,
        scale_range: tuple[float, float],
        crop_hw: tuple[int, int],
        flip: bool = True,
    ) -> None:
        if not paths:
            raise ValueError("no pretraining images")
        self.paths = list(paths)
        self.resize, self.scale_range, self.crop_hw, self.flip = resize, scale_range, crop_hw, flip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        for attempt in range(len(self.paths)):
            path = self.paths[(index + attempt) % len(self.paths)]
            try:
                image = load_image(path)
                break
            except Exception as err:  # noqa: BLE001
                logger.warning("cannot decode %s (%s); using the next image instead", path, err)
        else:
            raise RuntimeError("no pretraining image could be decoded")
        img, _ = augment(
            image,
            None,
            rng=np.random.default_rng(seed),
            resize=self.resize,
            scale_range=self.scale_range,
            crop_hw=self.crop_hw,
            flip=self.flip,
            ignore_index=0,
        )
        return {"image": img, "name": str(path)}


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape; keep other fields (and unequal tensors) as lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], Tensor) and all(v.shape == values[0].shape for v in values):
            out[key] = torch.stack(values)
        elif key == "unknown_pixels":
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out
