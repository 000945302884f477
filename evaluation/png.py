"""Fast, checked PNG decoding for label maps (Cityscapes, panoptic).

Every decoder here gives the array ``np.array(PIL.Image.open(path))`` gives (what the official scripts
read), or raises ``ValueError`` naming the file. Single-channel 8 / 16-bit PNGs and 8-bit RGB PNGs go
through ``torchvision.io.decode_png`` (a core dependency; it releases the GIL, so a thread pool decodes
in parallel with counting). pyspng decodes a single file faster but holds the GIL, and OpenCV was slower
on the whole job; both stay selectable (``benchmarks/cityscapes_speed.py`` measures all of them).
Palette, low-bit-depth and other layouts go through Pillow, which returns palette indices like the
official scripts see them.

A truncated or corrupt file is an error here even where Pillow would fill the missing rows silently.
"""

from __future__ import annotations

import functools
import struct
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np

try:
    import cv2  # optional: opencv-python(-headless)

    cv2.setNumThreads(1)
except ImportError:  # pragma: no cover - depends on the environment
    cv2 = None
try:
    import pyspng  # optional: libspng, the fastest PNG decoder measured here
except ImportError:  # pragma: no cover - depends on the environment
    pyspng = None

# torchvision 0.29 warns on every decode that torchcodec supersedes it; the PNG decoder still works
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)
DECODERS = ("auto", "spng", "cv2", "torchvision", "pil")
DEFAULT_DECODER = "auto"  # torchvision: releases the GIL (pyspng decodes faster alone but holds it)
_SIG = b"\x89PNG\r\n\x1a\n"


def png_header(data: bytes, path: str | Path) -> tuple[int, int, int, int]:
    """(height, width, bit depth, colour type) from the IHDR chunk; ValueError naming ``path``."""
    if len(data) < 33 or data[:8] != _SIG or data[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file (bad signature or header)")
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    if zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
        raise ValueError(f"{path}: corrupt PNG header (IHDR checksum)")
    return h, w, depth, ctype


@functools.cache
def _auto_decoder() -> str:
    """torchvision when its PNG decoder exists (deprecated in 0.29 in favour of torchcodec), else OpenCV,
    else Pillow."""
    try:
        from torchvision.io import decode_png  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the torchvision version
        return "cv2" if cv2 is not None else "pil"
    return "torchvision"


def _decode_fast(data: bytes, channels: int, decoder: str, depth: int = 8) -> np.ndarray | None:
    if decoder == "auto":  # measured: libspng for 8-bit grey, torchvision for 16-bit and colour
        decoder = "spng" if pyspng is not None and channels == 1 and depth == 8 else _auto_decoder()
    if decoder == "spng":
        arr = pyspng.load(data)
        # libspng returns 16-bit grey as grey + alpha: keep the grey plane
        return arr[:, :, 0] if channels == 1 and arr.ndim == 3 else arr
    if decoder == "cv2":
        flag = (
            cv2.IMREAD_UNCHANGED
            if channels == 1
            else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        )
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        if arr is not None and channels == 3:
            arr = arr[:, :, ::-1]  # BGR -> RGB
        return arr
    import torch
    from torchvision.io import ImageReadMode, decode_png

    mode = ImageReadMode.UNCHANGED if channels == 1 else ImageReadMode.RGB
    t = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode)
    return t[0].numpy() if t.shape[0] == 1 else t.permute(1, 2, 0).numpy()


def _decode_pil(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(BytesIO(data)) as im:
        im.load()
        return np.array(im)


def read_png(
    path: str | Path, *, decoder: str | None = None, data: bytes | None = None
) -> np.ndarray:
    """Decode a PNG to the array Pillow gives: (H, W) uint8 / uint16 / bool, or (H, W, C) uint8.

    Args:
        path: file to read (also the name used in errors).
        decoder: "auto" (= torchvision), "spng", "cv2", "torchvision" or "pil" for the fast layouts;
            all give the same arrays.
        data: the file's bytes when already read.
    Raises:
        ValueError naming ``path`` for a missing, truncated or corrupt file.
    """
    decoder = decoder or DEFAULT_DECODER
    if decoder not in DECODERS:
        raise ValueError(f"unknown PNG decoder {decoder!r}; choose one of {DECODERS}")
    if (decoder == "spng" and pyspng is None) or (decoder == "cv2" and cv2 is None):
        raise ValueError(f"PNG decoder {decoder!r} is not installed")
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ValueError(f"{path}: cannot read ({e.strerror or e})") from e
    h, w, depth, ctype = png_header(data, path)
    if decoder == "auto" and _auto_decoder() == "pil":
        decoder = "pil"
    fast = decoder != "pil" and ((ctype == 0 and depth in (8, 16)) or (ctype == 2 and depth == 8))
    try:
        arr = (
            _decode_fast(data, 1 if ctype == 0 else 3, decoder, depth)
            if fast
            else _decode_pil(data)
        )
    except (OSError, ValueError, RuntimeError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot decode PNG (truncated or corrupt file?): {e}") from e
    if arr is None or arr.shape[:2] != (h, w):
        raise ValueError(f"{path}: cannot decode PNG (truncated or corrupt file?)")
    if fast and (ctype == 0) != (arr.ndim == 2):  # e.g. a tRNS chunk made the decoder add alpha
        return _decode_pil(data)
    return arr
