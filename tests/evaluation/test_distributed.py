"""COCOEvaluator / SemSegEvaluator under torch.distributed (2 gloo ranks on CPU): rank 0 == single process."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from evaluation.coco import STAT_NAMES, COCOEvaluator
from evaluation.semseg import SemSegEvaluator


def _outputs(gt: dict):
    g = torch.Generator().manual_seed(0)
    for im in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        xywh = xywh + torch.randn(xywh.shape, generator=g, dtype=torch.float64)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:].abs()], 1)
        yield (
            im["id"],
            {
                "boxes": boxes,
                "scores": torch.rand(len(anns), generator=g),
                "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.long),
            },
        )


def _worker(rank: int, world: int, init: str, gt: dict, out_path: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    ev = COCOEvaluator(gt, device="cpu")
    seg = SemSegEvaluator(3, 255, device="cpu")
    for i, (img_id, out) in enumerate(_outputs(gt)):
        if i % world == rank:
            ev.process([{"image_id": img_id}], [out])
            seg.process(
                [{"sem_seg": torch.full((2, 2), 1)}], [{"sem_seg": torch.full((2, 2), i % 3)}]
            )
    res, sres = ev.evaluate(), seg.evaluate()
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"stats": [res[k] for k in STAT_NAMES], "miou": sres["mIoU"]}, f)
    else:
        assert res == {} and sres == {}
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_single_process(shared_data, tmp_path):
    gt = json.loads((shared_data / "coco_tiny/annotations/instances_val2017.json").read_text())
    mp.spawn(
        _worker, args=(2, f"file://{tmp_path / 'store'}", gt, str(tmp_path / "out.json")), nprocs=2
    )
    got = json.loads((tmp_path / "out.json").read_text())
    ev = COCOEvaluator(gt, device="cpu")
    seg = SemSegEvaluator(3, 255, device="cpu")
    for i, (img_id, out) in enumerate(_outputs(gt)):
        ev.process([{"image_id": img_id}], [out])
        seg.process([{"sem_seg": torch.full((2, 2), 1)}], [{"sem_seg": torch.full((2, 2), i % 3)}])
    res = ev.evaluate()
    assert got["stats"] == [res[k] for k in STAT_NAMES]
    assert got["miou"] == seg.evaluate()["mIoU"]
