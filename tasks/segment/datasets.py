"""From a :class:`~tasks.segment.config.DataConfig` to frames: which dataset, which split, which label fraction.

The one place that maps config fields to the listing functions of :mod:`tasks.segment.data` (which never see a
config), generates the embedded synthetic set on first use, and resolves label-fraction split files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tasks.common.dist import barrier, is_main
from tasks.segment import data as D
from tasks.segment.config import DataConfig
from tasks.segment.splits import fraction_tag, read_split_file, write_split_files
from tasks.segment.synthetic import CLASS_NAMES, ensure_synthetic_segmentation

__all__ = [
    "dataset_info",
    "dataset_root",
    "labelled_frames",
    "prepare_dataset",
    "pretraining_images",
    "train_frames",
]

logger = logging.getLogger("diffvision.segment.data")


def dataset_root(cfg: DataConfig) -> Path:
    """The dataset root (the synthetic set is generated here on first use)."""
    if cfg.dataset == "synthetic":
        s = cfg.synthetic
        return ensure_synthetic_segmentation(
            s.root, num_train=s.num_train, num_val=s.num_val, size=s.size, seed=s.seed
        )
    if not cfg.root:
        raise ValueError(f"data.root must be set for dataset {cfg.dataset!r}")
    root = Path(cfg.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} is not a folder")
    return root


def prepare_dataset(cfg: DataConfig) -> None:
    """Generate the synthetic set on rank 0 while the other ranks wait (call before any listing)."""
    if cfg.dataset == "synthetic":
        if is_main():
            dataset_root(cfg)
        barrier()


def dataset_info(cfg: DataConfig) -> D.DatasetInfo:
    if cfg.dataset == "cityscapes":
        return D.cityscapes_info()
    if cfg.dataset == "camvid":
        return D.camvid_info()
    if cfg.dataset == "synthetic":
        return D.folder_info(len(CLASS_NAMES), CLASS_NAMES, 255, name="synthetic")
    return D.folder_info(cfg.num_classes, cfg.class_names, cfg.ignore_index)


def labelled_frames(cfg: DataConfig, split: str) -> tuple[list[D.Frame], D.DatasetInfo]:
    """Every labelled frame of ``split`` and the dataset description."""
    root = dataset_root(cfg)
    if cfg.dataset == "cityscapes":
        frames = D.cityscapes_frames(root, split)
    elif cfg.dataset == "camvid":
        frames = D.camvid_frames(root, split)
    else:
        frames = D.folder_frames(root, split)
    return frames, dataset_info(cfg)


def train_frames(
    cfg: DataConfig, *, split_dir: str | Path, fraction: str | None = None
) -> tuple[list[D.Frame], D.DatasetInfo, Path]:
    """The labelled training frames of ``fraction`` (default ``cfg.label_fraction``).

    With ``cfg.split_file`` that file is used; otherwise the standard nested split files are written to
    ``split_dir`` (deterministic from ``cfg.split_seed``) and the one for ``fraction`` is read back. Returns the
    frames, the dataset description and the split file used.
    """
    frames, info = labelled_frames(cfg, cfg.train_split)
    fraction = fraction or cfg.label_fraction
    if cfg.split_file:
        path = Path(cfg.split_file)
    else:
        tags = sorted({"1/30", "1/8", "1/4", "full", fraction}, key=str)
        path = write_split_files(
            [f.name for f in frames], split_dir, seed=cfg.split_seed, fractions=tags
        )[fraction_tag(fraction)]
    chosen = set(read_split_file(path, [f.name for f in frames]))
    return [f for f in frames if f.name in chosen], info, path


def pretraining_images(cfg: DataConfig) -> list[Path]:
    """Images for denoising pretraining: ``cfg.unlabeled`` folders, else the train split's images (labels unused).

    Unreadable files are skipped with one counted warning naming them.
    """
    if cfg.unlabeled:
        paths = [p for folder in cfg.unlabeled for p in D.image_files(folder)]
    else:
        root = dataset_root(cfg)
        if cfg.dataset == "cityscapes":
            paths = [f.image for f in D.cityscapes_frames(root, cfg.train_split, labelled=False)]
        elif cfg.dataset == "camvid":
            paths = [f.image for f in D.camvid_frames(root, cfg.train_split)]
        else:
            paths = D.image_files(root / cfg.train_split / "images")
    if not paths:
        raise ValueError(f"no pretraining images found in {list(cfg.unlabeled) or cfg.train_split}")
    return D.readable_images(paths, what="pretraining images")
