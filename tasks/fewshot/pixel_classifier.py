"""DDPM-Seg's pixel classifier ensemble, trained with bounded memory.

The member MLP is DDPM-Seg's: ``Linear(D, a) -> ReLU -> BN(a) -> Linear(a, b) -> ReLU -> BN(b) ->
Linear(b, K)`` with (a, b) = (128, 32), or (256, 128) from 30 classes on; Linear weights
~N(0, 0.02), biases 0; Adam(lr 1e-3), batches of 64 pixels, cross-entropy.

Differences in HOW (not what) it is computed:

* The 10 members are trained at once as one stacked model (batched matmuls; BatchNorm over
  members x width channels). Adam is elementwise, so each member's update equals an independent
  Adam on its own batch; every member draws its own pixel order.
* Pixels are never materialised as ``[N*H*W, D]``: :class:`PixelBank` keeps per-image
  native-resolution float16 features and gathers bilinearly upsampled rows for a random chunk of
  pixels at a time (one chunk = one slice of the epoch's permutation).
* DDPM-Seg's early stop (after epoch index 3, a member stops once its per-batch loss has failed
  to beat its best batch loss more than 50 times in a row) is tracked per member on the device;
  a stopped member's parameters and BN statistics are those of the step at which it stopped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.features import sample_pixels

logger = logging.getLogger(__name__)


def hidden_widths(num_classes: int) -> tuple[int, int]:
    """DDPM-Seg's widths: (128, 32) below 30 classes, (256, 128) from 30 on."""
    return (256, 128) if num_classes >= 30 else (128, 32)


class PixelMLP(nn.Module):
    """One DDPM-Seg pixel classifier: (P, D) features -> (P, K) logits."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        a, b = hidden_widths(num_classes)
        self.layers = nn.Sequential(
            nn.Linear(in_dim, a),
            nn.ReLU(),
            nn.BatchNorm1d(a),
            nn.Linear(a, b),
            nn.ReLU(),
            nn.BatchNorm1d(b),
            nn.Linear(b, num_classes),
        )
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class EnsembleMLP(nn.Module):
    """``num_models`` :class:`PixelMLP` s stored as stacked tensors.

    ``forward(x)`` takes (M, P, D) (one batch per member) or (P, D) (shared) and returns
    (M, P, K). BatchNorm runs over ``M * width`` channels, i.e. per member.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        num_models: int = 10,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.in_dim, self.num_classes, self.num_models = in_dim, num_classes, num_models
        dims = (in_dim, *hidden_widths(num_classes), num_classes)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(num_models, i, o, generator=generator) * 0.02)
            for i, o in zip(dims, dims[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(num_models, o)) for o in dims[1:])
        self.norms = nn.ModuleList(nn.BatchNorm1d(num_models * w) for w in dims[1:-1])

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            x = x.expand(self.num_models, *x.shape)
        m, p, _ = x.shape
        h = x
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b[:, None, :], h, w)
            if layer < len(self.norms):
                h = F.relu(h)
                width = h.shape[-1]
                h = self.norms[layer](h.transpose(0, 1).reshape(p, m * width))
                h = h.reshape(p, m, width).transpose(0, 1)
        return h

    def member(self, index: int) -> PixelMLP:
        """Member ``index`` as a standalone :class:`PixelMLP` (same weights and BN stats)."""
        mlp = PixelMLP(self.in_dim, self.num_classes)
        linears = [m for m in mlp.layers if isinstance(m, nn.Linear)]
        bns = [m for m in mlp.layers if isinstance(m, nn.BatchNorm1d)]
        with torch.no_grad():
            for lin, w, b in zip(linears, self.weights, self.biases):
                lin.weight.copy_(w[index].T)
                lin.bias.copy_(b[index])
            for bn, src in zip(bns, self.norms):
                sl = slice(index * bn.num_features, (index + 1) * bn.num_features)
                bn.weight.copy_(src.weight[sl])
                bn.bias.copy_(src.bias[sl])
                bn.running_mean.copy_(src.running_mean[sl])
                bn.running_var.copy_(src.running_var[sl])
        return mlp.to(self.weights[0].device)


class PixelBank:
    """Labelled training pixels of N images, stored as native-resolution features.

    Args:
        features: per image, the feature maps ``[(C_i, h_i, w_i), ...]`` (float16 is fine).
        labels: per image, (H, W) integer labels in the upsampled frame.
        ignore_index: label excluded from training.
        min_class_pixels: DDPM-Seg relabels a class with fewer pixels than this in an image
            to ``ignore_index`` (20 in the reference); 0 disables.
        names: per image, a name for error messages (file name); default "image <i>".
    """

    def __init__(
        self,
        features: Sequence[Sequence[Tensor]],
        labels: Sequence[Tensor],
        *,
        ignore_index: int,
        min_class_pixels: int = 20,
        names: Sequence[str] | None = None,
    ) -> None:
        if len(features) != len(labels) or not labels:
            raise ValueError(
                f"need as many feature sets as label maps, got {len(features)} and {len(labels)}"
            )
        self.names = (
            list(names) if names is not None else [f"image {i}" for i in range(len(labels))]
        )
        self.ignore_index, self.min_class_pixels = ignore_index, min_class_pixels
        self.features = [list(f) for f in features]
        self.dim = sum(f.shape[0] for f in self.features[0])
        self.sizes: list[tuple[int, int]] = []
        ids, targets = [], []
        for i, lab in enumerate(labels):
            lab = self._drop_rare(lab.long(), ignore_index, min_class_pixels)
            flat = lab.reshape(-1)
            keep = (flat != ignore_index).nonzero().squeeze(1)
            ids.append(keep + i * (1 << 32))
            targets.append(flat[keep])
            self.sizes.append((lab.shape[0], lab.shape[1]))
        self.ids = torch.cat(ids)  # image index in the high 32 bits, flat pixel in the low bits
        self.targets = torch.cat(targets)
        self.pixels_per_image = [int(t.numel()) for t in targets]

    def check_trainable(self, batch_size: int) -> None:
        """Raise ValueError naming the images and their labelled-pixel counts when fewer than
        ``batch_size`` labelled pixels are left (all ``ignore_index``, or classes dropped as rarer
        than ``min_class_pixels``)."""
        if len(self) >= batch_size:
            return
        counts = ", ".join(f"{name}: {n}" for name, n in zip(self.names, self.pixels_per_image))
        raise ValueError(
            f"only {len(self)} labelled pixels left to train on "
            f"(fewer than classifier.batch_size={batch_size}) after dropping ignore_index "
            f"{self.ignore_index} and classes under {self.min_class_pixels} pixels per "
            f"image; labelled pixels per image: {counts}"
        )

    @staticmethod
    def _drop_rare(lab: Tensor, ignore_index: int, min_pixels: int) -> Tensor:
        if min_pixels <= 0:
            return lab
        classes, counts = lab.unique(return_counts=True)
        rare = classes[(counts < min_pixels) & (classes != ignore_index)]
        if rare.numel():
            lab = torch.where(torch.isin(lab, rare), torch.full_like(lab, ignore_index), lab)
        return lab

    def __len__(self) -> int:
        return int(self.ids.numel())

    def gather(self, rows: Tensor, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """Features (P, D) float32 and labels (P,) of bank rows ``rows`` (order kept)."""
        ids = self.ids[rows]
        image = ids >> 32
        pos = ids & ((1 << 32) - 1)
        out = torch.empty(len(rows), self.dim, device=device)
        for i in image.unique().tolist():
            sel = (image == i).nonzero().squeeze(1)
            width = self.sizes[i][1]
            maps = [f.to(device) for f in self.features[i]]
            ys, xs = pos[sel] // width, pos[sel] % width
            out[sel.to(device)] = sample_pixels(maps, ys, xs, self.sizes[i])
        return out, self.targets[rows].to(device)


@dataclass
class TrainStats:
    """What :func:`train_ensemble` did: iterations and epoch at which each member stopped."""

    iterations: list[int]
    stop_epochs: list[int]


def train_ensemble(
    bank: PixelBank,
    num_classes: int,
    *,
    num_models: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    max_epochs: int = 100,
    patience: int = 50,
    stop_after_epoch: int = 3,
    chunk_pixels: int = 1 << 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_iterations: int | None = None,
) -> tuple[EnsembleMLP, TrainStats]:
    """Train the ensemble on every pixel of ``bank`` (DDPM-Seg schedule, see module doc).

    Memory: the bank's native features, plus one chunk of ``chunk_pixels x D`` float32 rows.
    ``max_iterations`` caps the total number of steps (a budget knob; None = the reference).
    """
    bank.check_trainable(batch_size)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    model = EnsembleMLP(bank.dim, num_classes, num_models, generator=gen).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=device.type == "cuda")
    state = _StopState(model, device)
    total, epoch = 0, 0
    done = False
    for epoch in range(max_epochs):
        order = torch.randperm(len(bank), generator=gen)
        for start in range(0, len(order), chunk_pixels):
            x, y = bank.gather(order[start : start + chunk_pixels], device)
            n_batches = x.shape[0] // batch_size
            if n_batches == 0:
                continue
            member_order = torch.argsort(
                torch.rand(num_models, x.shape[0], generator=gen), dim=1
            ).to(device)
            for b in range(n_batches):
                idx = member_order[
                    :, b * batch_size : (b + 1) * batch_size
                ]  # (M, B): own batch per member
                loss = F.cross_entropy(
                    model(x[idx]).reshape(-1, num_classes), y[idx].reshape(-1), reduction="none"
                )
                loss = loss.reshape(num_models, batch_size).mean(dim=1)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
                state.after_step(
                    loss.detach(), check=epoch > stop_after_epoch, patience=patience, epoch=epoch
                )
                total += 1
                done = (total % 256 == 0 and bool(state.stopped.all())) or total == max_iterations
                if done:
                    break
            if done:
                break
        if done or bool(state.stopped.all()):
            break
    state.restore(model)
    model.eval()
    stop_epochs = torch.where(state.stopped, state.stop_epoch, epoch)
    stats = TrainStats(iterations=state.iterations.tolist(), stop_epochs=stop_epochs.tolist())
    logger.info(
        "ensemble trained: iterations per member %s, stop epochs %s",
        stats.iterations,
        stats.stop_epochs,
    )
    return model, stats


class _StopState:
    """DDPM-Seg's per-batch early stop for every member, tracked on device (no host syncs).

    All members keep computing, but a member's parameters and BN statistics are snapshotted
    right after the step at which it stops, and :meth:`restore` puts the snapshots back.
    """

    def __init__(self, model: EnsembleMLP, device: torch.device) -> None:
        m = model.num_models
        self.best = torch.full((m,), math.inf, device=device)
        self.fails = torch.zeros(m, dtype=torch.long, device=device)
        self.stopped = torch.zeros(m, dtype=torch.bool, device=device)
        self.iterations = torch.zeros(m, dtype=torch.long, device=device)
        self.stop_epoch = torch.full((m,), -1, dtype=torch.long, device=device)
        self.tensors = [*model.weights, *model.biases]
        for norm in model.norms:
            self.tensors += [norm.weight, norm.bias, norm.running_mean, norm.running_var]
        self.snapshots = [t.detach().clone() for t in self.tensors]
        self.num_models = m

    def _member_mask(self, flags: Tensor, like: Tensor) -> Tensor:
        if like.ndim == 1:  # BN tensors: members x width, member-major
            return flags.repeat_interleave(like.shape[0] // self.num_models)
        return flags.reshape(-1, *([1] * (like.ndim - 1)))

    @torch.no_grad()
    def after_step(self, loss: Tensor, *, check: bool, patience: int, epoch: int) -> None:
        active = ~self.stopped
        self.iterations += active.long()
        if not check:
            return
        better = loss < self.best
        self.best = torch.where(active & better, loss, self.best)
        self.fails = torch.where(active, torch.where(better, 0, self.fails + 1), self.fails)
        newly = active & (self.fails > patience)
        self.stop_epoch = torch.where(newly, epoch, self.stop_epoch)
        self.stopped |= newly
        for snap, tensor in zip(self.snapshots, self.tensors):
            snap.copy_(torch.where(self._member_mask(newly, tensor), tensor.detach(), snap))

    @torch.no_grad()
    def restore(self, model: EnsembleMLP) -> None:
        for snap, tensor in zip(self.snapshots, self.tensors):
            tensor.copy_(torch.where(self._member_mask(self.stopped, tensor), snap, tensor))


@dataclass
class Prediction:
    """Ensemble prediction for one image: (H, W) label maps and the uncertainty.

    Attributes:
        majority: per-pixel mode of the members' argmax (DDPM-Seg's output; ``torch.mode`` ties).
        soft: argmax of the members' mean softmax (soft voting).
        js: (H, W) Jensen-Shannon uncertainty, entropy of the mean softmax minus the mean entropy.
        uncertainty: mean of the top 10% ``js`` values (DDPM-Seg's per-image score).
    """

    majority: Tensor
    soft: Tensor
    js: Tensor
    uncertainty: float


@torch.no_grad()
def predict_image(
    model: EnsembleMLP,
    features: Sequence[Tensor],
    size: tuple[int, int],
    *,
    chunk_pixels: int = 1 << 15,
) -> Prediction:
    """Predict every pixel of one (H, W) image from its native-resolution feature maps."""
    model.eval()
    device = model.weights[0].device
    maps = [f.to(device) for f in features]
    height, width = size
    n = height * width
    majority = torch.empty(n, dtype=torch.long)
    soft = torch.empty(n, dtype=torch.long)
    js = torch.empty(n)
    for start in range(0, n, chunk_pixels):
        pos = torch.arange(start, min(n, start + chunk_pixels))
        x = sample_pixels(maps, pos // width, pos % width, size)
        logits = model(x)  # (M, P, K)
        probs = logits.softmax(-1)
        mean = probs.mean(0)
        member_entropy = torch.distributions.Categorical(logits=logits).entropy().mean(0)
        js[pos] = (torch.distributions.Categorical(probs=mean).entropy() - member_entropy).cpu()
        majority[pos] = torch.mode(logits.argmax(-1).T.cpu(), dim=1).values
        soft[pos] = mean.argmax(-1).cpu()
    top = js.sort().values[-max(1, n // 10) :]
    return Prediction(
        majority.reshape(size), soft.reshape(size), js.reshape(size), float(top.mean())
    )
