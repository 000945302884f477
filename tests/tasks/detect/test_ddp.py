"""torchrun DDP with 2 gloo processes on CPU: training, checkpoint, evaluation gathered across ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tasks.detect._tiny import tiny_overrides, tiny_synthetic
from tests.tasks.detect.test_train import metric_keys

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script: str, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(REPO / script),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path):
    data = tiny_synthetic(tmp_path / "synth")
    out = tmp_path / "ddp"
    run = _torchrun("tasks/detect/train.py", tiny_overrides(out, data, 2, "checkpoint_period=2"))
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"AP", "AP50", "APs"} <= metric_keys(metrics["steps_1"])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["type"] == "train"] == [1, 2]  # rank 0 writes once
    weights = out / "checkpoint_0000002.pt"
    evald = tmp_path / "eval"
    run = _torchrun(
        "tasks/detect/evaluate.py", ["--weights", str(weights), *tiny_overrides(evald, data, 2)]
    )
    assert run.returncode == 0, run.stderr[-3000:]
    dets = json.loads((evald / "detections_steps1.json").read_text())
    val = json.loads(Path(data[2].split("=", 1)[1]).read_text())
    assert {d["image_id"] for d in dets} == {
        im["id"] for im in val["images"]
    }  # both ranks' images gathered
