"""Cityscapes pixel-level evaluation from PNG files on the CPU: ours vs cityscapesscripts, side by side.

Measures (one process, same files):
1. PNG decoders on the three kinds of 1024x2048 files (prediction labelIds, GT labelIds, GT 16-bit
   instanceIds): Pillow, OpenCV, torchvision.io.decode_png; each must give Pillow's array exactly.
2. The whole job (find files, decode, count, scores): cityscapesscripts 2.3.0 ``evaluateImgLists`` vs
   ``evaluation.cityscapes.evaluate_dirs`` with each decoder; the results must be equal.

Run under the shared lock on the dev box::

    flock /tmp/diffvision-heavy.lock python benchmarks/cityscapes_speed.py --frames 200 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation import png
from evaluation.cityscapes import evaluate_dirs, find_frames
from evaluation.png import read_png
from evaluation.synthetic import synth_cityscapes


def available_decoders(*, with_auto: bool = False) -> list[str]:
    skip = ({"spng"} if png.pyspng is None else set()) | ({"cv2"} if png.cv2 is None else set())
    if not with_auto:
        skip.add("auto")
    return [d for d in png.DECODERS if d not in skip]


CPU_TIME: dict[int, float] = {}  # id(fn) -> process CPU seconds of the best run


def best_of(fn, repeat: int) -> tuple[float, object]:
    """Best wall time of ``repeat`` runs (and its process CPU time in ``CPU_TIME[id(fn)]``)."""
    best, out = math.inf, None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        t = time.perf_counter() - t0
        if t < best:
            best, CPU_TIME[id(fn)] = t, time.process_time() - c0
    return best, out


def bench_decoders(root: Path, repeat: int) -> None:
    n_files = len(list(root.glob("u*_pred.png")))
    print(f"== PNG decoders (ms per file, best of {repeat} over {n_files} files of each kind)")
    kinds = {
        "prediction (8-bit)": "pred",
        "GT labelIds (8-bit)": "gtFine_labelIds",
        "GT instanceIds (16-bit)": "gtFine_instanceIds",
    }
    avail = available_decoders()
    print(f"{'file':<26}" + "".join(f"{d:>14}" for d in avail) + "   identical to Pillow")
    for label, kind in kinds.items():
        files = sorted(root.glob(f"u*_{kind}.png"))
        ref = [np.array(Image.open(f)) for f in files]
        row, same = f"{label:<26}", True
        for d in avail:
            read_png(files[0], decoder=d)  # warm-up (imports, first-call costs)
            t, arrs = best_of(
                lambda d=d, files=files: [read_png(f, decoder=d) for f in files], repeat
            )
            same &= all(a.dtype == r.dtype and np.array_equal(a, r) for a, r in zip(arrs, ref))
            row += f"{1e3 * t / len(files):>14.2f}"
        print(row + f"   {'yes' if same else 'NO'}")


def official(triples) -> dict:
    if not hasattr(np, "in1d"):  # removed in numpy 2.4; the official script still calls it
        np.in1d = lambda a, b, invert=False: np.isin(a, b, invert=invert).ravel()  # type: ignore[attr-defined]
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs

    cs.args.JSONOutput, cs.args.quiet = False, True
    with contextlib.redirect_stdout(io.StringIO()):
        return cs.evaluateImgLists(
            [str(p) for p, _, _ in triples], [str(g) for _, g, _ in triples], cs.args
        )


def equal(a: dict, b: dict) -> bool:
    keys = (
        "averageScoreClasses",
        "averageScoreInstClasses",
        "averageScoreCategories",
        "averageScoreInstCategories",
    )
    ok = all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in keys)
    return ok and a["confMatrix"] == [list(map(int, r)) for r in b["confMatrix"]]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--unique", type=int, default=10, help="distinct frames (hard-linked copies)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--skip-official", action="store_true")
    p.add_argument(
        "--decoders",
        default=None,
        help="comma-separated decoders for the whole-job runs (default: all installed)",
    )
    args = p.parse_args(argv)
    print(f"CPU: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("CITYSCAPES_EXPORT_DIR", tmp)
        synth_cityscapes(root, args.frames, args.unique)
        bench_decoders(root, args.repeat)
        gt_dir, pred_dir = root / "gtFine", root / "pred"
        triples = find_frames(gt_dir, pred_dir)
        print(f"\n== whole job, {args.frames} frames 1024x2048, best of {args.repeat}")
        ref = None
        # warm-up outside the timings: imports, numba's cached kernel, first-call costs of both tools
        warm = root / "warm"
        (warm / "gt").mkdir(parents=True)
        (warm / "pred").mkdir()
        for p_, g_, i_ in triples[:2]:
            for src, dst in (
                (p_, warm / "pred" / p_.name),
                (g_, warm / "gt" / g_.name),
                (i_, warm / "gt" / i_.name),
            ):
                os.link(src, dst)
        if not args.skip_official:
            official(find_frames(warm / "gt", warm / "pred"))
        for d in args.decoders.split(",") if args.decoders else available_decoders(with_auto=True):
            evaluate_dirs(
                warm / "gt",
                warm / "pred",
                device="cpu",
                progress=False,
                workers=args.workers,
                decoder=d,
            )
        if not args.skip_official:
            fn = lambda: official(triples)  # noqa: E731
            t_off, ref = best_of(fn, args.repeat)
            c_off = CPU_TIME[id(fn)]
            print(
                f"{'cityscapesscripts 2.3.0':<34}{t_off:8.2f} s  ({1e3 * t_off / args.frames:.1f} ms/frame, "
                f"CPU {c_off:.2f} s)"
            )
        for d in args.decoders.split(",") if args.decoders else available_decoders(with_auto=True):

            def fn(d=d):
                return evaluate_dirs(
                    gt_dir, pred_dir, device="cpu", progress=False, workers=args.workers, decoder=d
                )

            t, out = best_of(fn, args.repeat)
            c = CPU_TIME[id(fn)]
            line = (
                f"{'ours, ' + d + f', {args.workers} threads':<34}{t:8.2f} s  "
                f"({1e3 * t / args.frames:.1f} ms/frame, CPU {c:.2f} s)"
            )
            if ref is not None:
                line += (
                    f"   {t_off / t:5.2f}x official wall ({c_off / c:4.1f}x less CPU), "
                    f"equal: {'yes' if equal(out, ref) else 'NO'}"
                )
            print(line)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
