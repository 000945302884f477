"""Logging set-up: readable text logs on rank 0 plus a JSON-lines record stream."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from tasks.common.dist import is_main

__all__ = ["JsonlLogger", "setup_logging"]


def setup_logging(output_dir: str | Path | None, name: str) -> logging.Logger:
    """A logger writing to stderr and ``output_dir/log.txt`` on rank 0 (warnings only on other ranks)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if is_main() else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if output_dir is not None and is_main():
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / "log.txt")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class JsonlLogger:
    """Append one JSON object per line to ``path`` (rank 0 only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        if not is_main():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")
