"""Issue 13, detection runs: no lost runs, no mixed runs, no truncated outputs, no diverged checkpoints, no
silently shifted labels.

Each test is the reproduction of one defect of the pre-kernel ``tasks/detect/train.py`` / ``evaluate.py`` turned
into a test (each failed there).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from tasks.common.checkpoint import latest_checkpoint, load_checkpoint
from tasks.detect import evaluate, train
from tests.tasks.detect._tiny import tiny_overrides, tiny_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    return tiny_synthetic(tmp_path_factory.mktemp("synth"))


def _no_val(data: list[str]) -> list[str]:
    return [*data, "data.val_json=null"]


def test_new_run_refuses_a_folder_holding_another_run(data, tmp_path):
    out = tmp_path / "run"
    train.run(tiny_overrides(out, _no_val(data), 1, "checkpoint_period=1"))
    before = (out / "checkpoint_0000001.pt").read_bytes()
    with pytest.raises(RuntimeError, match="--resume.*--overwrite"):
        train.run(tiny_overrides(out, _no_val(data), 2, "checkpoint_period=1", "seed=7"))
    assert (out / "checkpoint_0000001.pt").read_bytes() == before  # the old run is untouched
    assert not (out / "checkpoint_0000002.pt").exists()
    train.run(
        ["--overwrite", *tiny_overrides(out, _no_val(data), 1, "checkpoint_period=1", "seed=7")]
    )
    assert (out / "checkpoint_0000001.pt").read_bytes() != before


def test_resume_with_another_config_names_the_keys_and_keeps_config_yaml(data, tmp_path):
    out = tmp_path / "run"
    train.run(tiny_overrides(out, _no_val(data), 1, "checkpoint_period=1"))
    saved = (out / "config.yaml").read_text()
    with pytest.raises(RuntimeError, match=r"model\.head\.hidden_dim: 16 -> 32"):
        train.run(["--resume", *tiny_overrides(out, _no_val(data), 2, "model.head.hidden_dim=32")])
    assert (out / "config.yaml").read_text() == saved


def _partial_torch_save(monkeypatch):
    """torch.save that dies half-way through writing anything but a training checkpoint (a kill mid-write)."""
    real = torch.save

    def killed(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj:
            return real(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(f, (str, Path)):
            Path(f).write_bytes(half)
        else:
            f.write(half)
        raise OSError("simulated kill while writing")

    monkeypatch.setattr(torch, "save", killed)


def test_a_kill_while_writing_model_final_leaves_no_truncated_file(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _partial_torch_save(monkeypatch)
    with pytest.raises(OSError, match="simulated kill"):
        train.run(tiny_overrides(out, _no_val(data), 1))
    final = out / "model_final.pt"
    assert not final.exists() or load_checkpoint(final)  # absent or complete, never truncated


def test_a_kill_while_writing_metrics_json_leaves_no_truncated_file(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = Path.write_text

    def killed(self, text, *args, **kwargs):
        if "metrics" in self.name:
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError("simulated kill while writing")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", killed)
    try:
        train.run(tiny_overrides(out, data, 1, "test.max_eval_images=1"))
    except OSError:
        pass
    metrics = out / "metrics.json"
    assert not metrics.exists() or json.loads(metrics.read_text())


def _diverge_at(monkeypatch, call: int, *, nan_loss: bool) -> None:
    """From the ``call``-th training forward on: NaN weights after a finite loss, or a NaN loss."""
    from tasks.detect import model as model_module

    real_build = model_module.build_detector

    def build(cfg):
        det = real_build(cfg)
        forward, calls = det.forward, [0]

        def patched(images, targets=None):
            losses = forward(images, targets)
            calls[0] += 1
            if calls[0] == call:
                if nan_loss:
                    losses["loss_giou"] = losses["loss_giou"] * float("nan")
                else:  # value 0, gradient 0 * inf = NaN: the loss is finite, the step ruins the weights
                    p = next(det.parameters())
                    losses["loss_giou"] = losses["loss_giou"] + torch.sqrt(p.sum() * 0.0)
            return losses

        det.forward = patched
        return det

    monkeypatch.setattr(model_module, "build_detector", build)


def test_weights_gone_non_finite_are_never_checkpointed(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _diverge_at(monkeypatch, 2, nan_loss=False)
    with pytest.raises(FloatingPointError) as info:
        train.run(tiny_overrides(out, _no_val(data), 4, "checkpoint_period=1"))
    assert "checkpoint_0000001.pt" in str(info.value)  # which checkpoint to resume from
    newest = latest_checkpoint(out)
    assert newest is not None and newest.name == "checkpoint_0000001.pt"
    weights = load_checkpoint(newest)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert not (out / "model_final.pt").exists()


def test_non_finite_loss_names_the_checkpoint_to_resume_from(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _diverge_at(monkeypatch, 3, nan_loss=True)
    with pytest.raises(FloatingPointError, match="loss_giou") as info:
        train.run(tiny_overrides(out, _no_val(data), 4, "checkpoint_period=2"))
    assert str(out / "checkpoint_0000002.pt") in str(info.value)


def test_resume_falls_back_past_a_corrupt_newest_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "run"
    train.run(tiny_overrides(out, _no_val(data), 2, "checkpoint_period=1"))
    newest = out / "checkpoint_0000002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated (disk full, interrupted copy)
    train.run(["--resume", *tiny_overrides(out, _no_val(data), 3, "checkpoint_period=1")])
    assert "checkpoint_0000002.pt" in capsys.readouterr().err  # the skipped file is named
    assert load_checkpoint(out / "checkpoint_0000003.pt")["state"]["iteration"] == 3


# --- labels: the label map travels with the weights, evaluation never shifts labels silently ---


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    train.run(tiny_overrides(out, _no_val(data), 1))
    return out / "model_final.pt"


def _val_json(data: list[str]) -> Path:
    return Path(next(s.split("=", 1)[1] for s in data if s.startswith("data.val_json=")))


def _rewrite_val(data, tmp_path, change) -> list[str]:
    """``data`` with the val JSON replaced by ``change(json)``."""
    val = json.loads(_val_json(data).read_text())
    change(val)
    path = tmp_path / "val_changed.json"
    path.write_text(json.dumps(val))
    return [s for s in data if not s.startswith("data.val_json=")] + [f"data.val_json={path}"]


def _named_detections(out: Path, val_json: Path) -> list[tuple]:
    names = {c["id"]: c["name"] for c in json.loads(val_json.read_text())["categories"]}
    dets = json.loads((out / "detections_steps1.json").read_text())
    return sorted((d["image_id"], names[d["category_id"]], round(d["score"], 5)) for d in dets)


def test_model_final_holds_the_label_map(trained):
    obj = load_checkpoint(trained)
    assert obj["label_map"]["category_ids"] == [1, 2, 3, 4, 5, 6]
    assert (
        len(obj["label_map"]["names"]) == 6 and obj["config"]["model"]["head"]["num_classes"] == 6
    )
    assert obj["model"] and all(isinstance(v, torch.Tensor) for v in obj["model"].values())


def test_val_json_with_other_category_ids_is_remapped_by_name(data, trained, tmp_path):
    def renumber(
        val,
    ):  # same categories, ids reversed: sorted ids now list the names in the other order
        new = {c["id"]: 17 - c["id"] for c in val["categories"]}
        for c in val["categories"]:
            c["id"] = new[c["id"]]
        for a in val["annotations"]:
            a["category_id"] = new[a["category_id"]]

    changed = _rewrite_val(data, tmp_path, renumber)
    a, b = tmp_path / "eval_a", tmp_path / "eval_b"
    evaluate.run(["--weights", str(trained), *tiny_overrides(a, data, 1)])
    evaluate.run(["--weights", str(trained), *tiny_overrides(b, changed, 1)])
    dets_a = _named_detections(a, _val_json(data))
    assert dets_a and dets_a == _named_detections(b, _val_json(changed))


def test_val_json_with_other_categories_is_refused_naming_both_lists(data, trained, tmp_path):
    def rename(val):
        val["categories"][2]["name"] = "hexagon"

    trained_name = json.loads(_val_json(data).read_text())["categories"][2]["name"]
    changed = _rewrite_val(data, tmp_path, rename)
    with pytest.raises(ValueError, match=f"hexagon.*{trained_name}"):
        evaluate.run(["--weights", str(trained), *tiny_overrides(tmp_path / "eval", changed, 1)])


def test_category_matching_rules():
    from tasks.detect.build import category_ids_for

    trained = {"category_ids": [1, 2, 3], "names": ["cat", "dog", "cow"]}
    same = {"category_ids": [3, 1, 2], "names": ["cow", "cat", "dog"]}  # listed in another order
    assert category_ids_for(trained, same, source="v.json") == [1, 2, 3]
    renumbered = {"category_ids": [10, 20, 30], "names": ["dog", "cow", "cat"]}
    assert category_ids_for(trained, renumbered, source="v.json") == [30, 10, 20]
    swapped = {"category_ids": [1, 2, 3], "names": ["cat", "cow", "dog"]}  # names are the meaning
    assert category_ids_for(trained, swapped, source="v.json") == [1, 3, 2]
    for other in (
        {"category_ids": [1, 2, 3], "names": ["cat", "dog", "pig"]},  # another category
        {"category_ids": [1, 2], "names": ["cat", "dog"]},  # a category missing
        {"category_ids": [1, 2, 3, 4], "names": ["cat", "dog", "cow", "pig"]},  # one more
    ):
        with pytest.raises(ValueError, match=r"v\.json.*'cat'.*training order"):
            category_ids_for(trained, other, source="v.json")
