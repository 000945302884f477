"""A run's output folder: never destroy another run, never mix two, resume only what matches.

:func:`prepare_run_dir` is called once at the start of every training entry point, before anything is written:

- a folder holding another run (a ``config.yaml`` or a checkpoint) is refused unless ``resume`` or ``overwrite``;
- ``resume`` compares the saved config with this run's and raises naming every differing key, *before* anything in
  the folder changes;
- ``overwrite`` clears the previous run's checkpoints, logs and metrics (nothing else) and starts fresh;
- orphan temp files of killed writes are removed; the checkpoint to resume from is the newest one that loads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tasks.common.checkpoint import (
    atomic_write_text,
    checkpoints_newest_first,
    latest_loadable_checkpoint,
    remove_orphan_tmp_files,
)
from tasks.common.dist import all_gather_object, is_main

__all__ = ["RUN_FILES", "RunDirError", "config_differences", "prepare_run_dir"]

RUN_FILES = ("config.yaml", "log.txt", "log.jsonl", "metrics.json", "model_final.pt", "last.pt")
logger = logging.getLogger("diffvision.rundir")


class RunDirError(RuntimeError):
    """The output folder cannot be used for this run as asked (the message says why and what to do)."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], *, ignore: tuple[str, ...] = ()
) -> list[str]:
    """``key: saved -> current`` for every dotted key whose value differs (keys under ``ignore`` prefixes skipped)."""
    a, b = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(a) | set(b)):
        if any(key == p or key.startswith(p + ".") for p in ignore):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            lines.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return lines


def _holds_run(out: Path) -> bool:
    return (out / "config.yaml").is_file() or bool(checkpoints_newest_first(out))


def _clear_run(out: Path) -> None:
    for path in checkpoints_newest_first(out):
        path.unlink(missing_ok=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _check_and_write(
    out: Path,
    *,
    config: Mapping[str, Any],
    resume: bool,
    overwrite: bool,
    ignore_keys: tuple[str, ...],
) -> None:
    remove_orphan_tmp_files(out)
    if _holds_run(out) and not (resume or overwrite):
        raise RunDirError(
            f"{out} already holds a run (config.yaml or checkpoints). Pass --resume to continue it, "
            f"--overwrite to replace it, or choose another output_dir."
        )
    if resume and (out / "config.yaml").is_file():
        saved = yaml.safe_load((out / "config.yaml").read_text()) or {}
        diff = config_differences(saved, config, ignore=ignore_keys)
        if diff:
            raise RunDirError(
                f"--resume: the config of the run in {out} differs from this one:\n  "
                + "\n  ".join(diff)
            )
    if overwrite:
        _clear_run(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(dict(config), sort_keys=False))


def prepare_run_dir(
    output_dir: str | Path,
    *,
    config: Mapping[str, Any],
    resume: bool,
    overwrite: bool = False,
    ignore_keys: tuple[str, ...] = ("output_dir",),
) -> Path | None:
    """Check and prepare ``output_dir`` for a run of ``config``; return the checkpoint to resume from (or None).

    Raises:
        RunDirError: the folder holds another run and neither ``resume`` nor ``overwrite`` is set; or ``resume`` is
            set and the saved config differs (every differing key listed).
    """
    out = Path(output_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other")
    verdict: tuple[str | None, Path | None] = (None, None)  # (error, checkpoint to resume from)
    if is_main():
        try:
            _check_and_write(
                out, config=config, resume=resume, overwrite=overwrite, ignore_keys=ignore_keys
            )
            verdict = (None, latest_loadable_checkpoint(out) if resume else None)
        except RunDirError as err:
            verdict = (str(err), None)
    # every rank learns rank 0's verdict: a raise on rank 0 alone would leave the others waiting in a
    # collective, and only one process needs to read the checkpoints to find the newest good one
    error, ckpt = all_gather_object(verdict)[0]
    if error is not None:
        raise RunDirError(error)
    if resume and ckpt is None:
        logger.warning("--resume: no loadable checkpoint in %s, starting from scratch", out)
    return ckpt
