from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.fewshot.pixel_classifier import (
    EnsembleMLP,
    PixelBank,
    PixelMLP,
    hidden_widths,
    predict_image,
    train_ensemble,
)


def test_reference_architecture():
    mlp = PixelMLP(8448, 28)
    kinds = [type(m).__name__ for m in mlp.layers]
    assert kinds == ["Linear", "ReLU", "BatchNorm1d", "Linear", "ReLU", "BatchNorm1d", "Linear"]
    assert (
        sum(p.numel() for p in mlp.parameters())
        == 8448 * 128 + 128 + 256 + 128 * 32 + 32 + 64 + 32 * 28 + 28
    )
    assert hidden_widths(29) == (128, 32) and hidden_widths(30) == (256, 128)
    assert (
        abs(float(mlp.layers[0].weight.detach().std()) - 0.02) < 1e-3
        and float(mlp.layers[0].bias.detach().abs().sum()) == 0
    )


def test_stacked_training_equals_independent_members():
    torch.manual_seed(0)
    ens = EnsembleMLP(6, 4, num_models=3)
    members = [ens.member(i).train() for i in range(3)]
    ens.train()
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in members]
    stacked = torch.optim.Adam(ens.parameters(), lr=1e-3)  # elementwise: = 3 independent Adams
    for _step in range(4):
        x = torch.randn(3, 8, 6)
        y = torch.randint(0, 4, (3, 8))
        loss = (
            F.cross_entropy(ens(x).reshape(-1, 4), y.reshape(-1), reduction="none")
            .reshape(3, 8)
            .mean(1)
        )
        stacked.zero_grad()
        loss.sum().backward()
        stacked.step()
        for i, (m, opt) in enumerate(zip(members, opts)):
            opt.zero_grad()
            F.cross_entropy(m(x[i]), y[i]).backward()
            opt.step()
    ens.eval()
    x = torch.randn(5, 6)
    for i, m in enumerate(members):
        torch.testing.assert_close(ens(x)[i], m.eval()(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ens.member(i).eval()(x), m(x), rtol=1e-4, atol=1e-5)


def _synthetic(n_images: int, seed: int):
    """Two feature maps at strides 2 and 4 whose first channels encode the class."""
    gen = torch.Generator().manual_seed(seed)
    feats, labels = [], []
    for _ in range(n_images):
        lab = torch.zeros(16, 16, dtype=torch.long)
        lab[:, 8:] = 1
        lab[8:, :8] = 2
        lab[0, 0] = 3  # a class with < 20 pixels: relabelled to ignore
        lab[15, 15] = 255
        coarse = F.one_hot(lab[::2, ::2].clamp(max=2), 3).permute(2, 0, 1).float()
        fine = torch.randn(5, 4, 4, generator=gen)
        feats.append(
            [coarse.half() + 0.1 * torch.randn(3, 8, 8, generator=gen).half(), fine.half()]
        )
        labels.append(lab)
    return feats, labels


def test_bank_drops_rare_classes_and_ignore():
    feats, labels = _synthetic(2, 0)
    bank = PixelBank(feats, labels, ignore_index=255)
    assert len(bank) == 2 * (256 - 2) and bank.dim == 8
    assert set(bank.targets.tolist()) == {0, 1, 2}
    x, y = bank.gather(torch.tensor([0, 300, 5]))
    assert x.shape == (3, 8) and y.tolist() == bank.targets[[0, 300, 5]].tolist()


def test_training_learns_and_stops_early():
    feats, labels = _synthetic(3, 1)
    bank = PixelBank(feats, labels, ignore_index=255)
    model, stats = train_ensemble(bank, 4, num_models=4, patience=5, chunk_pixels=300, seed=0)
    assert all(e >= 4 for e in stats.stop_epochs) and max(stats.stop_epochs) < 100
    assert len(set(stats.iterations)) >= 1 and min(stats.iterations) > 4 * (len(bank) // 64) - 4
    pred = predict_image(model, feats[0], (16, 16), chunk_pixels=100)
    valid = labels[0] < 3
    acc_major = (pred.majority == labels[0])[valid].float().mean()
    acc_soft = (pred.soft == labels[0])[valid].float().mean()
    assert acc_major > 0.9 and acc_soft > 0.9
    assert pred.js.shape == (16, 16) and float(pred.js.min()) >= -1e-5
    assert pred.uncertainty >= float(pred.js.mean()) - 1e-6


def test_stopped_member_is_frozen():
    feats, labels = _synthetic(1, 2)
    bank = PixelBank(feats, labels, ignore_index=255)
    before = [
        model_w.clone()
        for model_w in train_ensemble(bank, 4, num_models=3, max_epochs=0)[0].weights
    ]
    model, stats = train_ensemble(bank, 4, num_models=3, patience=0, seed=3)
    per_epoch = len(bank) // 64
    # patience 0: a member stops at its first non-improving batch after epoch index 3
    assert all(4 <= s < 100 for s in stats.stop_epochs)
    assert all(it <= (s + 1) * per_epoch for it, s in zip(stats.iterations, stats.stop_epochs))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.weights))
