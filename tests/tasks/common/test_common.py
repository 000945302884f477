"""tasks.common: config loading rules, atomic checkpoints, exact RNG resume, LR schedule, EMA."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from tasks.common.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tasks.common.config import config_to_dict, load_config, save_config
from tasks.common.ema import ModelEMA
from tasks.common.schedule import warmup_step_lr


@dataclass
class Inner:
    size: int = 3
    sizes: tuple[int, ...] = (1, 2)
    mode: Literal["a", "b"] = "a"
    path: str | None = None


@dataclass
class Cfg:
    inner: Inner = field(default_factory=Inner)
    lr: float = 0.1
    flag: bool = False


def test_yaml_deltas_base_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("inner:\n  size: 5\n  mode: b\nlr: 0.5\n")
    (tmp_path / "exp.yaml").write_text("base: base.yaml\ninner:\n  sizes: [7, 8, 9]\n")
    cfg = load_config(Cfg, tmp_path / "exp.yaml", ["lr=1e-4", "inner.path=/x", "flag=true"])
    assert cfg == Cfg(inner=Inner(size=5, sizes=(7, 8, 9), mode="b", path="/x"), lr=1e-4, flag=True)
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(Cfg, tmp_path / "out" / "config.yaml") == cfg
    assert config_to_dict(cfg)["inner"]["sizes"] == [7, 8, 9]


@pytest.mark.parametrize(
    "text, overrides, match",
    [
        ("inner:\n  sise: 4\n", [], r"exp.yaml: inner: unknown key\(s\) \['sise'\]"),
        ("lr: fast\n", [], r"exp.yaml: lr: expected a number, got 'fast'"),
        ("inner:\n  mode: c\n", [], r"inner.mode: 'c' is not one of \['a', 'b'\]"),
        ("inner:\n  size: 2.5\n", [], "inner.size: expected an integer"),
        ("", ["inner.sizes=3"], "command-line override: inner.sizes: expected a list"),
        ("", ["flag"], "must look like 'section.key=value'"),
        ("- 1\n", [], "top level must be a mapping"),
    ],
)
def test_bad_config_names_key_and_file(
    tmp_path: Path, text: str, overrides: list[str], match: str
) -> None:
    (tmp_path / "exp.yaml").write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(Cfg, tmp_path / "exp.yaml", overrides)


def test_missing_and_circular_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config file not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="circular"):
        load_config(Cfg, tmp_path / "a.yaml")


def test_checkpoint_atomic_and_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"model": {"w": torch.arange(3.0)}, "iter": 7, "config": {"lr": 0.1}}
    save_checkpoint(state, tmp_path / "checkpoint_7.pt")
    save_checkpoint({**state, "iter": 12}, tmp_path / "checkpoint_12.pt")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_12.pt"
    assert load_checkpoint(tmp_path / "checkpoint_7.pt")["iter"] == 7

    def broken_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(state, tmp_path / "checkpoint_12.pt")
    monkeypatch.undo()
    assert (
        load_checkpoint(tmp_path / "checkpoint_12.pt")["iter"] == 12
    )  # the old file survived intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_12.pt", "checkpoint_7.pt"]
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")


def test_rng_state_round_trip_through_checkpoint(tmp_path: Path) -> None:
    save_checkpoint({"rng": rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_warmup_step_lr() -> None:
    kw = dict(base_lr=1.0, warmup_iters=10, warmup_factor=0.01, milestones=(20, 30), gamma=0.1)
    assert warmup_step_lr(0, **kw) == pytest.approx(0.01)
    assert warmup_step_lr(5, **kw) == pytest.approx(0.505)
    assert warmup_step_lr(10, **kw) == 1.0
    assert warmup_step_lr(20, **kw) == pytest.approx(0.1)
    assert warmup_step_lr(35, **kw) == pytest.approx(0.01)


def test_ema_tracks_weights() -> None:
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    before = ema.module.weight.clone()
    ema.update(model, step=100)  # past the warm-up: min(0.5, 101/110) = 0.5
    torch.testing.assert_close(ema.module.weight, 0.5 * before + 0.5)
    with pytest.raises(TypeError):
        ema.update(model)  # the step is required: the warm-up cannot be forgotten
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.0)
    # warm-up: the first update (step 0) uses decay 1/10, so the EMA jumps most of the way to the weights
    ema = ModelEMA(torch.nn.Linear(2, 1), decay=0.999)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10**6) == 0.999
    before = ema.module.weight.clone()
    ema.update(model, step=0)
    torch.testing.assert_close(ema.module.weight, 0.1 * before + 0.9)
