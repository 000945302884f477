"""Up-front checks of detection data: annotation JSON fields, image files and paths from data files.

Used by ``data.py``. Every check names the annotation file and the entry (``images[i]``, ``id=...``).

- :func:`read_json_object`: empty, truncated or non-object JSON -> ValueError naming the file.
- :func:`image_int`: ``id`` / ``height`` / ``width`` must be JSON integers (numeric strings are refused
  rather than coerced: one rule for every field).
- :func:`safe_join`: paths from data files (``file_name``, LVIS ``coco_url``) are normalised lexically
  (symlinked dataset folders keep working) and refused when they leave the data root; absolute paths only
  with ``allow_absolute=True``.
- :func:`image_problem`: a cheap header read (PIL ``open`` parses the header only) plus a look at the
  file's last bytes for the JPEG end marker / PNG ``IEND`` chunk finds missing, unreadable, truncated and
  wrong-size images without decoding them.
"""

from __future__ import annotations

import json
import os
from typing import Any

from PIL import Image

TAIL_BYTES = 4096  # JPEG / PNG trailers are searched for in the last TAIL_BYTES of the file


def read_json_object(path: str) -> dict[str, Any]:
    """Loads a JSON file that must hold an object; ValueError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the annotation file: {e}") from e
    if not text.strip():
        raise ValueError(f"{path}: the annotation file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: not valid JSON (truncated?): {e.msg} at line {e.lineno} column {e.colno}"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a JSON object with 'images' and 'categories', "
            f"got {type(data).__name__}"
        )
    return data


def image_int(entry: Any, key: str, where: str, *, positive: bool) -> int:
    """``entry[key]`` as an int; ValueError naming ``where`` and the field when it is not a JSON integer
    (a bool, float, string or null is refused) or, with ``positive``, not > 0."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
    if key not in entry:
        raise ValueError(f"{where}: lacks '{key}'")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"{where}: '{key}' must be an integer, got {value!r} ({type(value).__name__})"
        )
    if positive and value <= 0:
        raise ValueError(f"{where}: '{key}' must be positive, got {value}")
    return value


def safe_join(root: str, relative: str, where: str, *, allow_absolute: bool = False) -> str:
    """``root/relative`` normalised; ValueError naming ``where`` when it leaves ``root``.

    Absolute ``relative`` paths are refused unless ``allow_absolute`` (then returned normalised as is).
    The check is lexical (``os.path.normpath``), so a dataset folder that is a symlink still works.
    """
    if not isinstance(relative, str) or not relative:
        raise ValueError(f"{where}: the image path must be a non-empty string, got {relative!r}")
    if os.path.isabs(relative):
        if allow_absolute:
            return os.path.normpath(relative)
        raise ValueError(
            f"{where}: absolute image path {relative!r} is outside the data root "
            f"{root!r} (pass allow_absolute_paths=True to allow absolute paths)"
        )
    base = os.path.normpath(root)
    path = os.path.normpath(os.path.join(base, relative))
    if os.path.commonpath([base, path]) != base:
        raise ValueError(
            f"{where}: image path {relative!r} resolves to {path!r}, outside the data root {root!r}"
        )
    return path


def _truncated(path: str, fmt: str | None) -> bool:
    trailer = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(fmt or "")
    if trailer is None:
        return False  # other formats: found when decoded
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - TAIL_BYTES))
        return trailer not in f.read()


def image_problem(path: str, width: int, height: int) -> str | None:
    """What is wrong with an image file (``missing``, ``unreadable``, ``truncated``, a size mismatch with
    the annotation's ``width`` x ``height``), or None. Reads the header and the last bytes only."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as im:
            size, fmt = im.size, im.format
    except (OSError, SyntaxError, ValueError) as e:
        return f"unreadable ({e})"
    if _truncated(path, fmt):
        return f"truncated (no {fmt} end marker)"
    if size != (width, height):
        return f"{size[0]}x{size[1]} on disk but {width}x{height} in the annotation file"
    return None
