"""Logging for every task: readable text logs on rank 0, a JSON-lines record stream, and TensorBoard scalars.

:func:`setup_logging` gives the text log; :class:`MetricWriter` is the one metrics sink every training loop uses
(``log.jsonl`` always; TensorBoard event files under ``tb/`` when the optional ``tensorboard`` package is
installed, ``pip install -e '.[tensorboard]'``).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from tasks.common.dist import is_main

__all__ = ["JsonlLogger", "MetricWriter", "setup_logging"]


def _install(logger: logging.Logger, handlers: list[logging.Handler]) -> None:
    logger.setLevel(logging.INFO if is_main() else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for handler in handlers:
        logger.addHandler(handler)


def setup_logging(output_dir: str | Path | None, name: str) -> logging.Logger:
    """A logger writing to stderr and ``output_dir/log.txt`` on rank 0 (warnings only on other ranks).

    The shared machinery's loggers (``diffvision.*``: progress lines, run folder, checkpoints, training kernel)
    get the same handlers, so their messages reach the same console and ``log.txt`` whatever ``name`` is.
    """
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    handlers: list[logging.Handler] = [console]
    if output_dir is not None and is_main():
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / "log.txt")
        file_handler.setFormatter(fmt)
        handlers.append(file_handler)
    _install(logging.getLogger("diffvision"), handlers)
    logger = logging.getLogger(name)
    # a child of "diffvision": its records reach the handlers above by propagation
    if name.startswith("diffvision."):
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.setLevel(logging.INFO if is_main() else logging.WARNING)
        logger.propagate = True
    elif name != "diffvision":
        _install(logger, handlers)
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


class MetricWriter:
    """One sink for training / evaluation records: JSONL always, TensorBoard scalars when available (rank 0 only).

    ``write({"type": "train", "total_loss": 0.5, "lr": 1e-4}, step=120)`` appends the record (with ``iteration``)
    to ``output_dir/log.jsonl`` and adds every finite numeric value as the scalar ``<type>/<key>``.
    """

    def __init__(
        self, output_dir: str | Path, *, jsonl_name: str = "log.jsonl", tensorboard: bool = True
    ) -> None:
        self.jsonl = JsonlLogger(Path(output_dir) / jsonl_name)
        self._tb = None
        if tensorboard and is_main():
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional extra
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tb"))

    @property
    def tensorboard_enabled(self) -> bool:
        return self._tb is not None

    def write(self, record: dict[str, Any], *, step: int, tag: str | None = None) -> None:
        """Append ``record`` at global ``step``; nested dicts (e.g. per-class values) stay in the JSONL only.

        TensorBoard scalars are named ``<tag>/<key>``, ``tag`` defaulting to the record's ``type``; records of one
        type logged at the same step (e.g. evaluations with 1, 4 and 8 sampling steps) need distinct tags.
        """
        if not is_main():
            return
        self.jsonl.write({"iteration": step, **record})
        if self._tb is None:
            return
        prefix = tag or str(record.get("type", "metrics"))
        for key, value in record.items():
            if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
                value = value.item()
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
