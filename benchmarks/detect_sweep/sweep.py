"""Sweep of the embedded detection default: several ``tasks/detect/train.py`` runs side by side.

    python benchmarks/detect_sweep/sweep.py benchmarks/detect_sweep/variants_2026-11-22.json /tmp/runs 8 500

Each variant names a synthetic dataset variant (``datasets.json`` beside the variants file: deltas over
``tasks.detect.synthetic.SyntheticSpec``) and config overrides over ``configs/detect/default_synthetic.yaml``.
Datasets are generated once, up front, under ``/tmp/ds/<name>``; then up to PARALLEL runs share the machine
(one GPU for all of them, or the CPU). A run still going after DEADLINE seconds (from the start) is killed and
reported with its last log line. One JSON line per run (AP per sampling-steps setting, AP50, APs/m/l, last
loss, iterations, seconds per iteration) is printed and appended to ``OUTDIR/summary.jsonl``.

Runs sharing a machine slow each other down, so compare AP at equal iterations, not wall times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def generate(item: tuple[str, dict]) -> tuple[str, float]:
    """Writes dataset variant ``name`` to /tmp/ds/<name>; returns (name, seconds)."""
    from tasks.detect.synthetic import SyntheticSpec, ensure_synthetic_dataset

    name, spec = item
    start = time.time()
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    ensure_synthetic_dataset(f"/tmp/ds/{name}", SyntheticSpec(**fields))
    return name, time.time() - start


def summarise(name: str, run_dir: Path, returncode: int, wall: float, variant: dict) -> dict:
    """One result record from a finished (or killed) run's metrics.json and log.jsonl."""
    rec = {
        "name": name,
        "rc": returncode,
        "wall": round(wall, 1),
        "data": variant["data"],
        "overrides": variant["overrides"],
    }
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rec["AP"] = {k: round(100 * v["AP"], 2) for k, v in metrics.items()}
        rec["AP50"] = {k: round(100 * v["AP50"], 2) for k, v in metrics.items()}
        rec["APsml"] = {
            k: [round(100 * v[x], 1) for x in ("APs", "APm", "APl")] for k, v in metrics.items()
        }
    except (OSError, ValueError, KeyError):
        rec["err"] = (run_dir / "stdout.txt").read_text()[-800:]
    try:
        train = [
            json.loads(line)
            for line in (run_dir / "log.jsonl").read_text().splitlines()
            if '"train"' in line
        ]
        rec.update(
            loss_last=round(train[-1]["total_loss"], 2),
            iters=train[-1]["iteration"],
            s_it=round(train[-1]["time"], 3),
        )
    except (OSError, ValueError, IndexError, KeyError):
        pass
    return rec


def main(argv: list[str]) -> None:
    variants_path, out, parallel, deadline = (
        Path(argv[0]),
        Path(argv[1]),
        int(argv[2]),
        float(argv[3]),
    )
    variants = json.loads(variants_path.read_text())
    datasets = json.loads((variants_path.parent / "datasets.json").read_text())
    start = time.time()
    needed = sorted({v["data"] for v in variants})
    with ProcessPoolExecutor(len(needed)) as pool:
        for name, seconds in pool.map(generate, [(n, datasets[n]) for n in needed]):
            print(f"dataset {name}: {seconds:.1f}s", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    queue, running = list(variants), {}
    while queue or running:
        while queue and len(running) < parallel:
            v = queue.pop(0)
            run_dir = out / v["name"]
            run_dir.mkdir(parents=True, exist_ok=True)
            spec = [
                f"data.synthetic_spec.{k}={json.dumps(x)}" for k, x in datasets[v["data"]].items()
            ]
            cmd = [
                sys.executable,
                str(ROOT / "tasks/detect/train.py"),
                f"data.synthetic_root=/tmp/ds/{v['data']}",
                f"output_dir={run_dir}",
                "data.num_workers=1",
                "test.eval_batch_size=8",
                *spec,
                *v["overrides"],
            ]
            log = open(run_dir / "stdout.txt", "w")  # noqa: SIM115 (closed with the process)
            running[v["name"]] = (
                subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT),
                time.time(),
                v,
                log,
            )
        time.sleep(2)
        for name, (proc, started, v, log) in list(running.items()):
            if proc.poll() is None and time.time() - start < deadline:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            del running[name]
            rec = summarise(name, out / name, proc.returncode, time.time() - started, v)
            print(json.dumps(rec), flush=True)
            with open(out / "summary.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
