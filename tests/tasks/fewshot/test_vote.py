"""The few-shot ensemble's vote rules, observed on hand-designed member outputs.

DDPM-Seg's output is the per-pixel MAJORITY vote of the members' argmax (``torch.mode`` over
members); "soft" voting is the argmax of the members' MEAN SOFTMAX (not of their mean logits). The
pixels below are designed so that majority, soft and mean-logit votes disagree, so each rule is
pinned separately.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tasks.fewshot.pixel_classifier import predict_image

H, W, K = 2, 3, 3
# per pixel, per member (5 members) logits over 3 classes
TABLE = torch.tensor(
    [
        # pixel 0: votes 2,2,1,1,1 -> majority 1; the two class-2 votes are certain -> soft 2
        [[0, 0, 10], [0, 0, 10], [0, 0.1, 0], [0, 0.1, 0], [0, 0.1, 0]],
        # pixel 1: votes 0,0,0,1,2 -> 0 under every rule
        [[3, 0, 0], [3, 0, 0], [3, 0, 0], [0, 3, 0], [0, 0, 3]],
        # pixel 2: unanimous 2
        [[0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 0, 4], [0, 0, 5]],
        # pixel 3: votes 1,1,0,0,2: a tie between 0 and 1
        [[0, 2, 0], [0, 2, 0], [2, 0, 0], [2, 0, 0], [0, 0, 2]],
        # pixel 4: votes 2,0,0,0,1 -> majority 0, and soft 0
        [[0, 0, 9], [1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]],
        # pixel 5: votes 0,1,1,1,1 -> majority 1; soft 1; mean LOGITS would say 0
        [[10, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]],
    ],
    dtype=torch.float32,
)  # (P, M, K)


class TableEnsemble(nn.Module):
    """Stands in for ``EnsembleMLP``: feature channel 0 holds the pixel index; returns (M, P, K)."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(torch.zeros(1))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TABLE[x[:, 0].round().long()].transpose(0, 1)


def _predict():
    index_map = torch.arange(H * W, dtype=torch.float32).reshape(1, H, W)
    return predict_image(
        TableEnsemble(), [index_map], (H, W), chunk_pixels=4
    )  # chunks split the image


def test_majority_is_the_mode_of_member_argmaxes() -> None:
    pred = _predict()
    majority = pred.majority.flatten().tolist()
    assert majority[0] == 1 and majority[1] == 0 and majority[2] == 2
    assert majority[3] in (0, 1)  # a 2-2-1 tie resolves to one of the tied classes
    assert majority[4] == 0 and majority[5] == 1


def test_soft_vote_is_the_argmax_of_the_mean_softmax() -> None:
    pred = _predict()
    assert pred.soft.flatten().tolist() == [2, 0, 2, pred.soft.flatten()[3].item(), 0, 1]
    mean = TABLE.softmax(-1).mean(1)
    assert pred.soft.flatten().tolist() == mean.argmax(-1).tolist()
    # mean logits would give 0 at pixel 5: the soft vote is not a logit average
    assert int(TABLE[5].mean(0).argmax()) == 0


def test_js_uncertainty_is_entropy_of_mean_minus_mean_entropy() -> None:
    pred = _predict()
    probs = TABLE.double().softmax(-1)
    mean = probs.mean(1)
    ent_mean = -(mean * mean.log()).sum(-1)
    mean_ent = -(probs * probs.clamp_min(1e-300).log()).sum(-1).mean(1)
    js = (ent_mean - mean_ent).float().reshape(H, W)
    torch.testing.assert_close(pred.js, js, atol=1e-5, rtol=1e-4)
    # mean of the top 10 % (at least one pixel) of the JS map
    assert math.isclose(pred.uncertainty, float(js.max()), rel_tol=1e-5)
    assert float(pred.js.flatten()[2]) < float(pred.js.flatten()[0])  # unanimous < split pixel


def test_bank_relabels_classes_below_twenty_pixels_only() -> None:
    """DDPM-Seg relabels a class with FEWER than 20 pixels in an image to ignore; exactly 20 is kept."""
    from tasks.fewshot.pixel_classifier import PixelBank

    lab = torch.zeros(8, 8, dtype=torch.long)
    lab.view(-1)[:20] = 1  # exactly 20 pixels of class 1
    lab.view(-1)[20:39] = 2  # 19 pixels of class 2
    bank = PixelBank([[torch.zeros(2, 8, 8)]], [lab], ignore_index=255, min_class_pixels=20)
    counts = torch.bincount(bank.targets, minlength=3).tolist()
    assert counts == [64 - 39, 20, 0]
