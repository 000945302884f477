"""Convert a Pascal VOC split to a COCO instances JSON.

    python -m tasks.detect.voc2coco VOC_ROOT --split train OUT.json
    python -m tasks.detect.voc2coco VOC_ROOT --split val OUT.json --classes RBC,WBC,Platelets
    python -m tasks.detect.voc2coco VOC_ROOT --split val OUT.json --classes classes.txt   # one name a line

Class order: ``--classes`` when given, else the order of first appearance in the split's XML files. Use
the same ``--classes`` for every split of one dataset (the training config's label order must match).
Degenerate boxes (xmax <= xmin or ymax <= ymin) are dropped with one counted warning naming the files.
``images`` of the output are relative to ``VOC_ROOT/JPEGImages`` (``data.train_images``).
Details (coordinates, difficult objects): ``tasks/detect/voc.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from tasks.common.checkpoint import atomic_write_text
from tasks.detect.voc import convert_voc


def parse_classes(value: str | None) -> list[str] | None:
    """``a,b,c`` or a text file with one class name per line."""
    if value is None:
        return None
    if Path(value).is_file():
        return [line.strip() for line in Path(value).read_text().splitlines() if line.strip()]
    return [name.strip() for name in value.split(",") if name.strip()]


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "voc_root", help="folder holding Annotations/, JPEGImages/, ImageSets/Main/"
    )
    parser.add_argument("output", help="COCO JSON to write")
    parser.add_argument(
        "--split", default="train", help="ImageSets/Main/<split>.txt (default train)"
    )
    parser.add_argument(
        "--classes", default=None, help="comma-separated names or a file, one a line"
    )
    parser.add_argument("--skip-difficult", action="store_true", help="drop difficult objects")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    coco, report = convert_voc(
        args.voc_root,
        args.split,
        classes=parse_classes(args.classes),
        include_difficult=not args.skip_difficult,
    )
    atomic_write_text(args.output, json.dumps(coco))
    logging.info(
        "%s: %d images, %d boxes, %d classes %s; %d degenerate boxes dropped",
        args.output,
        len(coco["images"]),
        len(coco["annotations"]),
        len(coco["categories"]),
        [c["name"] for c in coco["categories"]],
        len(report.degenerate),
    )
    return coco


if __name__ == "__main__":
    main()
