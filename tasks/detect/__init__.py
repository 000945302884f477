"""DiffusionDet: noise-to-box object detection.

``from tasks.detect import DiffusionDetector`` gives the user API (imported lazily so that importing
``tasks.detect.config`` stays light).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DiffusionDetector", "DiffusionDet", "build_detector"]


def __getattr__(name: str) -> Any:
    if name == "DiffusionDetector":
        from tasks.detect.predictor import DiffusionDetector

        return DiffusionDetector
    if name in ("DiffusionDet", "build_detector"):
        from tasks.detect import model

        return getattr(model, name)
    raise AttributeError(f"module 'tasks.detect' has no attribute {name!r}")
