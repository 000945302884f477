"""Pixel features from a diffusion U-Net's decoder (DDPM-Seg's feature extractor), as a public API.

For every timestep ``t`` the clean images are noised with ``x_t = q_sample(schedule, x0, t, noise)``
and one U-Net forward pass returns the outputs of the requested decoder blocks. DDPM-Seg's setting
is the default: blocks (5, 6, 7, 8, 12), timesteps (50, 150, 250), and ONE noise tensor shared by
every image and every timestep.

Features are returned at native resolution ``dict[(t, block)] -> (B, C, h, w)`` (22x smaller than
the upsampled stack for the 256px config); :func:`collect` upsamples and concatenates them
(t-major, then block order), and :class:`FeatureCache` keeps them on disk as float16.

Example::

    unet = ADMUNet.from_flags(**DDPMSEG_256_FLAGS); unet.load_state_dict(torch.load(path))
    sched = NoiseSchedule.from_name("linear", 1000)
    feats = extract_features(unet, sched, images)           # images (B, 3, 256, 256) in [-1, 1]
    pixels = collect(feats, size=(256, 256))                 # (B, 8448, 256, 256)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from backbones.adm_unet import ADMUNet
from backbones.base import FeatureSpec
from diffusion_core import NoiseSchedule, q_sample

logger = logging.getLogger(__name__)

DEFAULT_TIMESTEPS: tuple[int, ...] = (50, 150, 250)
DEFAULT_BLOCKS: tuple[int, ...] = (5, 6, 7, 8, 12)

FeatureKey = tuple[int, int]  # (timestep, decoder block)


def feature_specs_for(
    unet: ADMUNet,
    blocks: Sequence[int] = DEFAULT_BLOCKS,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
) -> list[FeatureSpec]:
    """One :class:`FeatureSpec` per (t, block), t-major, named ``"t{t}_b{block}"``.

    Channels and strides come from the U-Net's computed block table, so the pixel-classifier
    input size is ``sum(s.channels for s in specs)`` (8448 for DDPM-Seg's 256px setting).
    """
    n = len(unet.decoder_blocks)
    bad = [b for b in blocks if not 0 <= b < n]
    if bad:
        raise ValueError(f"decoder blocks {bad} out of range 0..{n - 1} for this U-Net")
    return [
        FeatureSpec(f"t{t}_b{b}", unet.decoder_blocks[b].channels, unet.decoder_blocks[b].stride)
        for t in timesteps
        for b in blocks
    ]


def shared_noise(shape: Sequence[int], seed: int = 0, device: torch.device | str = "cpu") -> Tensor:
    """DDPM-Seg's shared noise: one ``randn(1, *shape)`` from a generator seeded on ``device``.

    CUDA and CPU generators give different numbers for the same seed, so the device is part of
    the noise identity (and of the cache key).
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn((1, *shape), generator=gen, device=device)


def _autocast(
    device: torch.device, unet: ADMUNet, fp16: bool | None
) -> contextlib.AbstractContextManager:
    use = (device.type == "cuda") if fp16 is None else fp16
    if use and unet.dtype == torch.float32 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def extract_features(
    unet: ADMUNet,
    schedule: NoiseSchedule,
    images: Tensor,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    blocks: Sequence[int] = DEFAULT_BLOCKS,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    fp16: bool | None = None,
) -> dict[FeatureKey, Tensor]:
    """Decoder activations of ``unet`` for noised copies of ``images``.

    Args:
        unet: the (eval-mode) diffusion U-Net.
        schedule: its training noise schedule (``x_t`` uses ``alphas_cumprod[t]``).
        images: (B, 3, H, W) in [-1, 1]; H, W divisible by the U-Net's largest stride.
        timesteps: noise levels t, one U-Net forward pass each.
        blocks: indices into ``unet.output_blocks``.
        noise: (1, 3, H, W) shared by all images (default shape) or (B, 3, H, W) per image.
            Default: one tensor drawn with ``generator`` and reused for every image and t.
        generator: random source for the default noise.
        fp16: autocast to float16; default True on CUDA, False on CPU.

    Returns:
        ``{(t, block): (B, C_block, H / stride, W / stride)}`` float32, ordered t-major.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    if noise is None:
        noise = torch.randn((1, *images.shape[1:]), generator=generator, device=images.device)
    if noise.shape[1:] != images.shape[1:] or noise.shape[0] not in (1, images.shape[0]):
        raise ValueError(
            f"noise shape {tuple(noise.shape)} does not fit images {tuple(images.shape)}"
        )
    noise = noise.to(images).expand_as(images)
    out: dict[FeatureKey, Tensor] = {}
    with _autocast(images.device, unet, fp16):
        for t in timesteps:
            x_t = q_sample(schedule, images, int(t), noise)
            feats = unet.decoder_features(x_t, int(t), blocks)
            for b in blocks:
                out[(int(t), int(b))] = feats[int(b)].float()
    return out


def collect(
    features: dict[FeatureKey, Tensor], size: tuple[int, int], mode: str = "bilinear"
) -> Tensor:
    """Upsample every feature map to ``size`` (H, W) and concatenate along channels.

    Returns (B, sum C, H, W) in the dict's order (t-major for :func:`extract_features`).
    ``mode="bilinear"`` uses ``align_corners=False``, as DDPM-Seg's ``collect_features``.
    """
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    maps = [
        F.interpolate(f.float(), size=tuple(size), mode=mode, **kwargs) for f in features.values()
    ]
    return torch.cat(maps, dim=1)


def sample_pixels(
    feature_maps: Sequence[Tensor], ys: Tensor, xs: Tensor, size: tuple[int, int]
) -> Tensor:
    """Bilinearly upsampled feature values at pixels (ys, xs) of a (H, W) image, without
    materialising the upsampled maps.

    Equals ``collect({...}, size)[0, :, ys, xs].T`` for ``align_corners=False`` bilinear
    upsampling: pixel centre ``(2y + 1) / H - 1`` in normalised coordinates, clamped at the border.

    Args:
        feature_maps: per-feature (C_i, h_i, w_i) tensors of ONE image.
        ys, xs: (P,) integer pixel coordinates in the (H, W) frame.
        size: (H, W) of the label frame.

    Returns:
        (P, sum C_i) float32.
    """
    height, width = size
    gy = (2 * ys.to(torch.float32) + 1) / height - 1
    gx = (2 * xs.to(torch.float32) + 1) / width - 1
    dev = feature_maps[0].device
    grid = torch.stack([gx, gy], dim=-1).to(dev)[None, None]  # (1, 1, P, 2) as (x, y)
    cols = [
        F.grid_sample(
            f[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )[0, :, 0]
        for f in feature_maps
    ]
    return torch.cat(cols, dim=0).T


# ---------------------------------------------------------------------------- caching
def module_fingerprint(module: torch.nn.Module) -> str:
    """SHA-1 over a module's state_dict (names, shapes and bytes): a checkpoint identity."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(
            tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def image_fingerprint(image: Tensor) -> str:
    """SHA-1 of one image tensor's shape and float32 values."""
    array = image.detach().float().cpu().contiguous().numpy()
    return hashlib.sha1(str(array.shape).encode() + array.tobytes()).hexdigest()


class FeatureCache:
    """Native-resolution float16 features on disk, one ``.pt`` file per image.

    The folder name hashes (checkpoint, blocks, timesteps, noise seed, noise device); the file
    name hashes the image, so a changed image, model or setting never returns stale features.

    Args:
        root: cache folder (created).
        checkpoint: checkpoint identity, e.g. :func:`module_fingerprint` or a file hash.
        blocks, timesteps: the extraction setting.
        noise_seed: seed of the shared noise (see :func:`shared_noise`).
        noise_device: device type the noise was drawn on ("cuda" / "cpu").
    """

    def __init__(
        self,
        root: str | Path,
        *,
        checkpoint: str,
        blocks: Sequence[int],
        timesteps: Sequence[int],
        noise_seed: int,
        noise_device: str,
    ) -> None:
        self.setting = {
            "checkpoint": checkpoint,
            "blocks": [int(b) for b in blocks],
            "timesteps": [int(t) for t in timesteps],
            "noise_seed": int(noise_seed),
            "noise_device": str(noise_device),
        }
        key = hashlib.sha1(json.dumps(self.setting, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".setting.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.setting, indent=1))
        tmp.replace(self.dir / "setting.json")  # atomic: concurrent runs never see a partial file

    def path(self, image: Tensor) -> Path:
        return self.dir / f"{image_fingerprint(image)}.pt"

    def load(self, image: Tensor) -> dict[FeatureKey, Tensor] | None:
        """Cached ``{(t, b): (C, h, w) float16}`` for one image, or None."""
        path = self.path(image)
        if not path.exists():
            return None
        stored = torch.load(path, map_location="cpu", weights_only=True)
        keys = {k: tuple(int(v) for v in k.split("_")) for k in stored}
        return {keys[k]: f for k, f in stored.items()}  # type: ignore[misc]

    def save(self, image: Tensor, features: dict[FeatureKey, Tensor]) -> None:
        """Store one image's ``{(t, b): (C, h, w)}`` as float16 (atomic rename)."""
        path = self.path(image)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(
            {
                f"{t}_{b}": f.detach().to("cpu", torch.float16).contiguous()
                for (t, b), f in features.items()
            },
            tmp,
        )
        tmp.replace(path)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def extract_per_image(
    unet: ADMUNet,
    schedule: NoiseSchedule,
    images: Sequence[Tensor],
    *,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    blocks: Sequence[int] = DEFAULT_BLOCKS,
    noise_seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    cache: FeatureCache | None = None,
    progress: bool = False,
    noise_device: torch.device | str | None = None,
) -> list[dict[FeatureKey, Tensor]]:
    """Native-resolution float16 features for each image, through the cache when given.

    Args:
        images: (3, H, W) tensors in [-1, 1], all the same size.
        noise_seed, noise_device: the shared noise is ``shared_noise((3, H, W), noise_seed,
            noise_device)`` (default: drawn on ``device``, DDPM-Seg's choice; "cpu" gives the same
            noise on every machine), then moved to ``device``.

    Returns:
        One ``{(t, b): (C, h, w) float16 CPU tensor}`` per image (about 50 MB each for the
        256px DDPM-Seg setting), the input the pixel classifiers stream from.
    """
    from tqdm.auto import tqdm

    if not images:
        return []
    device = torch.device(device)
    noise = shared_noise(tuple(images[0].shape), noise_seed, noise_device or device).to(device)
    results: list[dict[FeatureKey, Tensor] | None] = [
        cache.load(im) if cache else None for im in images
    ]
    todo = [i for i, r in enumerate(results) if r is None]
    if cache is not None:
        logger.info(
            "feature cache %s: %d hits, %d to compute",
            cache.dir,
            len(images) - len(todo),
            len(todo),
        )
    for chunk in tqdm(list(_batches(len(todo), batch_size)), desc="features", disable=not progress):
        idx = todo[chunk]
        batch = torch.stack([images[i] for i in idx]).to(device)
        feats = extract_features(unet, schedule, batch, timesteps, blocks, noise=noise)
        for j, i in enumerate(idx):
            one = {k: f[j].to("cpu", torch.float16) for k, f in feats.items()}
            if cache is not None:
                cache.save(images[i], one)
            results[i] = one
    return [r for r in results if r is not None]


def feature_nbytes(per_image: Sequence[dict[FeatureKey, Tensor]]) -> int:
    """Total bytes held by per-image feature dicts."""
    return int(sum(np.prod(f.shape) * f.element_size() for d in per_image for f in d.values()))
