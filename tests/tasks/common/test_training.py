"""The shared training kernel: one step, one checkpoint schema with exact restore, run folders, progress, metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from tasks.common.checkpoint import latest_loadable_checkpoint, save_checkpoint
from tasks.common.ema import ModelEMA
from tasks.common.log import MetricWriter
from tasks.common.progress import LineProgress
from tasks.common.rundir import RunDirError, config_differences, prepare_run_dir
from tasks.common.training import (
    CHECKPOINT_KEYS,
    NonFiniteLossError,
    TrainState,
    autocast,
    make_grad_scaler,
    optimizer_step,
    restore_training_state,
    save_training_state,
)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt, ModelEMA(model, decay=0.99)


def _step(model, opt, ema, it: int) -> dict[str, float]:
    x = torch.randn(16, 4)  # drawn from the global RNG: restore must bring it back
    losses = {"mse": model(x).pow(2).mean(), "l1": model(x).abs().mean() * 0.1}
    out = optimizer_step(losses, opt, iteration=it, clip_grad_norm=1.0)
    ema.update(model, step=it)
    return out


def test_optimizer_step_returns_terms_total_and_grad_norm() -> None:
    model, opt, ema = _setup()
    out = _step(model, opt, ema, 0)
    assert set(out) == {"mse", "l1", "total_loss", "grad_norm"}
    assert out["total_loss"] == pytest.approx(out["mse"] + out["l1"])
    assert out["grad_norm"] > 0


def test_optimizer_step_clips_to_the_given_norm() -> None:
    model, opt, _ = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = {"big": model(torch.full((4, 4), 100.0)).sum()}
    optimizer_step(loss, opt, iteration=0, clip_grad_norm=0.5)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(norm) == pytest.approx(0.5, rel=1e-5)


def test_non_finite_loss_names_every_term_and_iteration_and_steps_nothing() -> None:
    model, opt, _ = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    losses = {
        "loss_ce": torch.tensor(0.25, requires_grad=True),
        "loss_giou": torch.tensor(float("nan")),
    }
    with pytest.raises(
        NonFiniteLossError, match=r"iteration 17.*loss_ce=0\.25.*loss_giou=nan"
    ) as info:
        optimizer_step(losses, opt, iteration=17)
    assert isinstance(info.value, FloatingPointError) and info.value.iteration == 17
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_autocast_and_scaler_modes() -> None:
    with autocast("cpu", "bf16"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast("cpu", "off"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    assert make_grad_scaler("cpu", "bf16") is None and make_grad_scaler("cpu", "fp16") is not None
    with pytest.raises(ValueError, match="amp"):
        autocast("cpu", "fp32")


def test_checkpoint_schema_and_exact_continuation(tmp_path: Path) -> None:
    model, opt, ema = _setup()
    for it in range(3):
        _step(model, opt, ema, it)
    state = TrainState(iteration=3, epoch=1, batch_in_epoch=2)
    path = save_training_state(
        tmp_path / "c.pt",
        model=model,
        optimizer=opt,
        ema=ema,
        state=state,
        config={"a": 1},
        extra={"label_map": {"names": ["x"]}},
    )
    assert set(torch.load(path, weights_only=True)) == set(CHECKPOINT_KEYS)
    expected = [_step(model, opt, ema, it) for it in range(3, 6)]

    model2, opt2, ema2 = _setup(seed=123)  # different init: everything must come from the file
    restored, ckpt = restore_training_state(path, model=model2, optimizer=opt2, ema=ema2)
    assert (
        restored == state
        and ckpt["extra"]["label_map"] == {"names": ["x"]}
        and ckpt["config"] == {"a": 1}
    )
    got = [_step(model2, opt2, ema2, it) for it in range(3, 6)]
    assert got == expected  # bit-equal losses: data RNG, optimiser moments, weights all restored
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema.state_dict().values(), ema2.state_dict().values()):
        assert torch.equal(a, b)


def test_restore_refuses_foreign_files_and_missing_ema(tmp_path: Path) -> None:
    model, opt, ema = _setup()
    save_checkpoint({"model": model.state_dict()}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=r"weights.pt.*not a training checkpoint"):
        restore_training_state(tmp_path / "weights.pt", model=model, optimizer=opt)
    save_training_state(
        tmp_path / "c.pt", model=model, optimizer=opt, state=TrainState(), config={}
    )
    with pytest.raises(ValueError, match="ema"):
        restore_training_state(tmp_path / "c.pt", model=model, optimizer=opt, ema=ema)


def test_run_dir_refuses_another_run_and_checks_config_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = {"solver": {"lr": 0.1, "steps": [1, 2]}, "output_dir": str(out)}
    assert prepare_run_dir(out, config=cfg, resume=False) is None
    assert yaml.safe_load((out / "config.yaml").read_text()) == cfg
    with pytest.raises(RunDirError, match="already holds a run"):
        prepare_run_dir(out, config=cfg, resume=False)
    changed = {"solver": {"lr": 0.2, "steps": [1, 2]}, "output_dir": str(out)}
    with pytest.raises(RunDirError, match=r"solver\.lr: 0\.1 -> 0\.2"):
        prepare_run_dir(out, config=changed, resume=True)
    assert (
        yaml.safe_load((out / "config.yaml").read_text()) == cfg
    )  # not overwritten before failing
    save_checkpoint({"x": 1}, out / "checkpoint_0000010.pt")
    assert prepare_run_dir(out, config=cfg, resume=True) == out / "checkpoint_0000010.pt"
    assert prepare_run_dir(out, config=changed, resume=False, overwrite=True) is None
    assert not (out / "checkpoint_0000010.pt").exists()
    assert yaml.safe_load((out / "config.yaml").read_text()) == changed


def test_resume_skips_a_corrupt_newest_checkpoint_and_orphan_tmp_files(
    tmp_path: Path, caplog
) -> None:
    save_checkpoint({"x": 1}, tmp_path / "checkpoint_0000010.pt")
    (tmp_path / "checkpoint_0000020.pt").write_bytes(b"truncated")
    orphan = tmp_path / ".checkpoint_0000030.pt.abc123.tmp"
    orphan.write_bytes(b"half")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"a": 1}))
    with caplog.at_level(logging.WARNING):
        assert (
            prepare_run_dir(tmp_path, config={"a": 1}, resume=True)
            == tmp_path / "checkpoint_0000010.pt"
        )
    assert "checkpoint_0000020.pt" in caplog.text
    assert not orphan.exists()
    assert latest_loadable_checkpoint(tmp_path / "nothing") is None


def test_config_differences_lists_added_and_removed_keys() -> None:
    assert config_differences({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == ["a.c: '<absent>' -> 2"]
    assert config_differences({"a": (1, 2)}, {"a": [1, 2]}) == []


def test_line_progress_logs_lines_not_redraws(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="diffvision.progress"):
        bar = LineProgress(total=4, desc="train", interval=0.0)
        for _ in range(4):
            bar.update(1)
        bar.set_postfix(loss="0.1")
        bar.close()
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5 and lines[-1].startswith("train 4/4") and "loss=0.1" in lines[-1]
    assert all("\r" not in line for line in lines)


def test_metric_writer_jsonl_and_tensorboard(tmp_path: Path) -> None:
    writer = MetricWriter(tmp_path)
    writer.write({"type": "train", "total_loss": 0.5, "lr": 1e-3, "per_class": {"a": 1.0}}, step=7)
    writer.close()
    record = json.loads((tmp_path / "log.jsonl").read_text())
    assert record == {
        "iteration": 7,
        "type": "train",
        "total_loss": 0.5,
        "lr": 1e-3,
        "per_class": {"a": 1.0},
    }
    if writer.tensorboard_enabled or list((tmp_path / "tb").glob("events.*")):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "tb"))
        acc.Reload()
        assert {"train/total_loss", "train/lr"} <= set(acc.Tags()["scalars"])
        assert acc.Scalars("train/total_loss")[0].step == 7


def test_config_yaml_reads_off_and_no_as_strings(tmp_path: Path) -> None:
    from tasks.common.config import load_yaml_deltas, parse_overrides

    assert parse_overrides(["solver.amp=off", "x=true", "y=no"]) == {
        "solver": {"amp": "off"},
        "x": True,
        "y": "no",
    }
    (tmp_path / "c.yaml").write_text("amp: off\nema: false\n")
    assert load_yaml_deltas(tmp_path / "c.yaml") == {"amp": "off", "ema": False}


def test_kernel_messages_reach_every_tasks_log_file(tmp_path: Path) -> None:
    from tasks.common.log import setup_logging

    setup_logging(tmp_path, "fewshot").info("task message")
    bar = LineProgress(total=2, desc="train", interval=0.0)
    bar.update(1)
    bar.close()
    text = (tmp_path / "log.txt").read_text()
    assert "task message" in text and "diffvision.progress] train 1/2" in text


def test_atomic_png_round_trips_arrays_and_images(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from tasks.common.checkpoint import atomic_write_png

    labels = np.arange(300, dtype=np.uint16).reshape(15, 20)  # > 255: 16-bit label maps survive
    atomic_write_png(tmp_path / "l.png", labels)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "l.png")), labels)
    rgb = Image.new("RGB", (3, 2), (1, 2, 3))
    atomic_write_png(tmp_path / "c.png", rgb)
    assert Image.open(tmp_path / "c.png").getpixel((2, 1)) == (1, 2, 3)
    assert not list(tmp_path.glob(".*.tmp"))


def test_optimizer_step_sets_the_given_learning_rate_before_stepping() -> None:
    model, _, _ = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer_step({"l": model(torch.ones(2, 4)).sum()}, opt, iteration=0, lr=0.0)
    assert all(g["lr"] == 0.0 for g in opt.param_groups)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # stepped with lr 0
