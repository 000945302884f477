"""Progress reporting that suits where the output goes.

On a terminal, a tqdm bar that redraws in place. Piped to a file (CI, ``nohup``, a cluster's log), redraws would
pile up (770 KB of carriage-return frames for one detection run), so instead one plain line is logged every
``interval`` seconds and at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

from tasks.common.dist import is_main

__all__ = ["LineProgress", "progress"]

logger = logging.getLogger("diffvision.progress")


class LineProgress:
    """A tqdm-like counter (``update`` / ``set_postfix`` / ``close``, iterable) that logs a line every few seconds."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        initial: int = 0,
        interval: float = 10.0,
        disable: bool = False,
    ) -> None:
        self.iterable = iterable
        self.total = (
            total
            if total is not None
            else (len(iterable) if hasattr(iterable, "__len__") else None)
        )
        self.desc, self.n, self.interval, self.disable = desc, initial, interval, disable
        self.postfix: dict[str, Any] = {}
        self._start = self._last = time.monotonic()
        self._start_n = initial
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def set_postfix(
        self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(now)

    def _emit(self, now: float) -> None:
        if self.disable:
            return
        rate = (self.n - self._start_n) / max(now - self._start, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        eta = ""
        if self.total and rate > 0:
            eta = f", eta {(self.total - self.n) / rate:.0f}s"
        extras = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        logger.info("%s %s (%.2f it/s%s) %s", self.desc, done, rate, eta, extras)

    def close(self) -> None:
        if not self._closed:
            self._emit(time.monotonic())
            self._closed = True


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    initial: int = 0,
    interval: float = 10.0,
    leave: bool = True,
) -> Any:
    """tqdm on a TTY, :class:`LineProgress` otherwise; silent on ranks other than 0."""
    disable = not is_main()
    if sys.stderr.isatty():
        return tqdm(
            iterable,
            total=total,
            desc=desc,
            initial=initial,
            disable=disable,
            dynamic_ncols=True,
            leave=leave,
        )
    return LineProgress(
        iterable, total=total, desc=desc, initial=initial, interval=interval, disable=disable
    )
