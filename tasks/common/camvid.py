"""CamVid (SegNet's 11-class version) for every task: class names, palette, void label, and the split lists.

Split lists are ``image label`` lines; they are read once here for every task.

Each line names an image and its label map relative to the dataset root; an entry that resolves outside the root
(``../`` or an absolute path) is refused naming the list file and line, so a data file cannot make a task read
elsewhere.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CAMVID_CLASSES", "CAMVID_IGNORE", "CAMVID_PALETTE", "inside_root", "read_pair_list"]

CAMVID_CLASSES: tuple[str, ...] = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
CAMVID_IGNORE = 11  # void
CAMVID_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
)


def inside_root(root: Path, entry: str, listing: Path, line: int) -> Path:
    """``root / entry``, refused when it resolves outside ``root`` (``../`` or an absolute path)."""
    path = (root / entry).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{listing}:{line}: {entry!r} points outside the data root {root}")
    return root / entry


def read_pair_list(root: str | Path, split: str) -> list[tuple[str, Path, Path]]:
    """``(image entry, image path, label path)`` for every line of ``<root>/<split>.txt``.

    Raises:
        FileNotFoundError: the list does not exist.
        ValueError: a line is not ``image label``, or an entry leaves ``root`` (file and line named).
    """
    root = Path(root)
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: split list not found")
    pairs = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{listing}:{n}: expected 'image label', got {line!r}")
        image, label = (inside_root(root, p, listing, n) for p in parts)
        pairs.append((parts[0], image, label))
    return pairs
