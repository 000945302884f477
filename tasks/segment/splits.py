"""Label-fraction split files: deterministic (seeded) and nested (every smaller split inside the larger).

One seeded permutation of the sorted frame names; the split of fraction f is its first ``round(N * f)`` names
(at least 1), written sorted, one name per line, to ``<dir>/<tag>.txt`` (tag ``1_30``, ``1_8``, ``1_4``,
``full``). For Cityscapes train (2975 frames) this gives 99 / 372 / 744 / 2975; for CamVid train (367)
12 / 46 / 92 / 367. Lines starting with ``#`` are comments.

    python -m tasks.segment.splits --config configs/segment/camvid_r18_cpu.yaml --out splits/camvid
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from tasks.common.checkpoint import atomic_write_text

__all__ = [
    "STANDARD_FRACTIONS",
    "fraction_tag",
    "nested_splits",
    "parse_fraction",
    "read_split_file",
    "split_size",
    "write_split_files",
]

STANDARD_FRACTIONS: tuple[str, ...] = ("1/30", "1/8", "1/4", "full")


def parse_fraction(text: str) -> Fraction:
    """``"full"`` -> 1, ``"1/8"`` -> 1/8, ``"0.25"`` -> 1/4; must be in (0, 1]."""
    text = str(text).strip()
    try:
        value = Fraction(1) if text == "full" else Fraction(text).limit_denominator(10000)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"label fraction {text!r} is not 'full', 'a/b' or a decimal") from None
    if not 0 < value <= 1:
        raise ValueError(f"label fraction {text!r} must be in (0, 1]")
    return value


def fraction_tag(text: str) -> str:
    """File-name tag of a fraction: ``"1/8"`` -> ``"1_8"``, ``"full"`` -> ``"full"``."""
    value = parse_fraction(text)
    return "full" if value == 1 else f"{value.numerator}_{value.denominator}"


def split_size(total: int, fraction: str) -> int:
    """``round(total * fraction)`` (halves up), at least 1."""
    return max(1, math.floor(total * parse_fraction(fraction) + Fraction(1, 2)))


def nested_splits(
    names: Sequence[str], fractions: Sequence[str] = STANDARD_FRACTIONS, *, seed: int = 0
) -> dict[str, list[str]]:
    """``{tag: sorted names}``: prefixes of one seeded permutation of the sorted unique names."""
    pool = sorted(set(names))
    if len(pool) != len(names):
        raise ValueError("frame names must be unique")
    order = np.random.default_rng(seed).permutation(len(pool))
    return {
        fraction_tag(f): sorted(pool[i] for i in order[: split_size(len(pool), f)])
        for f in fractions
    }


def write_split_files(
    names: Sequence[str],
    out_dir: str | Path,
    *,
    seed: int = 0,
    fractions: Sequence[str] = STANDARD_FRACTIONS,
) -> dict[str, Path]:
    """Write one split file per fraction (atomically) and return ``{tag: path}``."""
    out = {}
    for tag, chosen in nested_splits(names, fractions, seed=seed).items():
        header = f"# {len(chosen)} of {len(names)} frames, fraction {tag.replace('_', '/')}, seed {seed}\n"
        out[tag] = atomic_write_text(
            Path(out_dir) / f"{tag}.txt", header + "\n".join(chosen) + "\n"
        )
    return out


def read_split_file(path: str | Path, available: Sequence[str]) -> list[str]:
    """Names listed in a split file; every one must be in ``available`` (error naming the missing ones)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    names = [
        ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    if not names:
        raise ValueError(f"split file {path} lists no frames")
    known = set(available)
    missing = [n for n in names if n not in known]
    if missing:
        shown = ", ".join(missing[:10]) + (
            f", ... ({len(missing)} in all)" if len(missing) > 10 else ""
        )
        raise ValueError(
            f"split file {path} names {len(missing)} frames that are not in the dataset: {shown}"
        )
    return names


def main(argv: list[str] | None = None) -> None:
    """Write the standard split files of a config's labelled train split."""
    from tasks.common.config import add_config_args, load_config
    from tasks.segment.config import SegmentConfig
    from tasks.segment.datasets import labelled_frames

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument(
        "--out", required=True, help="folder for 1_30.txt, 1_8.txt, 1_4.txt, full.txt"
    )
    parser.add_argument("--fractions", nargs="+", default=list(STANDARD_FRACTIONS))
    args = parser.parse_args(argv)
    cfg = load_config(SegmentConfig, args.config, args.overrides)
    frames, _ = labelled_frames(cfg.data, cfg.data.train_split)
    for tag, path in write_split_files(
        [f.name for f in frames], args.out, seed=cfg.data.split_seed, fractions=args.fractions
    ).items():
        print(f"{tag}: {path}")


if __name__ == "__main__":
    main()
