"""Pixel representations the ensembles train on, each with the spec that identifies it.

Three methods, all giving per image a list of native-resolution maps ``[(C_i, h_i, w_i), ...]`` that
the pixel classifier samples bilinearly at the label frame
(:func:`backbones.features.sample_pixels`):

- ``diffusion``: decoder activations of the diffusion U-Net (DDPM-Seg's features);
- ``random_unet``: the same U-Net architecture at a seeded initialisation (same blocks, t, noise):
  what the architecture alone gives;
- ``rgb_pos``: RGB in [-1, 1] plus normalised (y, x) in [-1, 1], 5 dims.

``spec`` (a plain dict) is what the features depend on; it is stored with every ensemble and
compared on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from backbones.adm_unet import ADMUNet
from backbones.features import (
    FeatureCache,
    extract_per_image,
    feature_specs_for,
    module_fingerprint,
)
from diffusion_core import NoiseSchedule
from tasks.fewshot.config import METHODS, FewShotConfig, UNetConfig, image_size_hw

RANDOM_UNET_SEED = (
    1234  # the initialisation of the random_unet baseline (built on the CPU: same on every machine)
)


def rgb_pos_maps(image: Tensor) -> list[Tensor]:
    """``[(5, H, W)]``: the image (3, H, W) in [-1, 1] with normalised (y, x) channels appended."""
    _, h, w = image.shape
    ys = torch.linspace(-1, 1, h)[:, None].expand(h, w)
    xs = torch.linspace(-1, 1, w)[None, :].expand(h, w)
    return [torch.cat([image.float().cpu(), ys[None], xs[None]])]


def random_unet(flags: dict[str, Any], seed: int = RANDOM_UNET_SEED) -> ADMUNet:
    """The ``random_unet`` baseline: ``ADMUNet.from_flags(**flags)`` initialised under ``seed`` on
    the CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ADMUNet.from_flags(**flags).eval()


class PixelFeatures:
    """Computes one method's feature maps for lists of images; ``spec`` identifies them.

    Args:
        method: ``diffusion`` | ``random_unet`` | ``rgb_pos``.
        image_size: (H, W) every image must have.
        unet: the U-Net (U-Net methods), in eval mode.
        unet_flags: its ``UNetConfig`` flags; schedule_name, num_timesteps: its noise schedule.
        blocks, timesteps, noise_seed, noise_device: the extraction setting (DDPM-Seg's shared
            noise).
        device: where the U-Net runs; batch_size: images per forward pass.
        cache_dir: on-disk float16 feature cache (empty = none).
        extra: entries added to the spec (e.g. the random_unet init seed).
    """

    def __init__(
        self,
        *,
        method: str,
        image_size: tuple[int, int],
        unet: ADMUNet | None = None,
        unet_flags: dict[str, Any] | None = None,
        schedule_name: str = "linear",
        num_timesteps: int = 1000,
        blocks: Sequence[int] = (),
        timesteps: Sequence[int] = (),
        noise_seed: int = 0,
        noise_device: str = "cpu",
        device: torch.device | str = "cpu",
        batch_size: int = 8,
        cache_dir: str = "",
        extra: dict[str, Any] | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown feature method {method!r}; expected one of {METHODS}")
        self.method, self.image_size = method, (int(image_size[0]), int(image_size[1]))
        self.device, self.batch_size = torch.device(device), batch_size
        self.spec: dict[str, Any] = {"method": method, "image_size": list(self.image_size)}
        self.unet, self.cache = None, None
        if method == "rgb_pos":
            self.spec["feature_dim"] = 5
            return
        if unet is None or unet_flags is None:
            raise ValueError(f"method {method!r} needs the U-Net and its flags")
        self.unet = unet.to(self.device).eval()
        self.schedule = NoiseSchedule.from_name(schedule_name, num_timesteps)
        self.blocks, self.timesteps = [int(b) for b in blocks], [int(t) for t in timesteps]
        self.noise_seed, self.noise_device = int(noise_seed), str(noise_device)
        if self.noise_device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(
                "features.noise_device is cuda (DDPM-Seg's noise draw) but no CUDA device is "
                "available: the same features need the same device; run on a GPU machine, or use "
                "noise_device=cpu for new ensembles"
            )
        fingerprint = module_fingerprint(unet)
        self.spec.update(
            unet_sha1=fingerprint,
            unet_flags=dict(unet_flags),
            noise_schedule=schedule_name,
            num_timesteps=int(num_timesteps),
            blocks=self.blocks,
            timesteps=self.timesteps,
            noise_seed=self.noise_seed,
            noise_device=self.noise_device,
            feature_dim=sum(
                s.channels for s in feature_specs_for(unet, self.blocks, self.timesteps)
            ),
            **(extra or {}),
        )
        if cache_dir:
            self.cache = FeatureCache(
                cache_dir,
                checkpoint=fingerprint,
                blocks=self.blocks,
                timesteps=self.timesteps,
                noise_seed=self.noise_seed,
                noise_device=self.noise_device,
            )

    def __call__(self, images: Sequence[Tensor]) -> list[list[Tensor]]:
        """Per image (3, H, W) in [-1, 1]: its feature maps (float16 on the CPU for the U-Net
        methods)."""
        for i, image in enumerate(images):
            if tuple(image.shape) != (3, *self.image_size):
                raise ValueError(
                    f"image {i}: shape {tuple(image.shape)}, "
                    f"these features need (3, {self.image_size})"
                )
        if self.unet is None:
            return [rgb_pos_maps(image) for image in images]
        per_image = extract_per_image(
            self.unet,
            self.schedule,
            list(images),
            timesteps=self.timesteps,
            blocks=self.blocks,
            noise_seed=self.noise_seed,
            noise_device=self.noise_device,
            device=self.device,
            batch_size=self.batch_size,
            cache=self.cache,
        )
        return [list(d.values()) for d in per_image]


def pixel_features(
    cfg: FewShotConfig, method: str, *, unet: ADMUNet | None, device: torch.device | str
) -> PixelFeatures:
    """The :class:`PixelFeatures` of ``method`` for the config's setting (``unet``: the diffusion
    U-Net)."""
    flags = asdict(cfg.unet)
    extra = None
    if method == "random_unet":
        unet, extra = random_unet(flags), {"init_seed": RANDOM_UNET_SEED}
    f = cfg.features
    return PixelFeatures(
        method=method,
        image_size=image_size_hw(cfg),
        unet=unet,
        unet_flags=flags,
        schedule_name=cfg.diffusion.noise_schedule,
        num_timesteps=cfg.diffusion.num_timesteps,
        blocks=f.blocks,
        timesteps=f.timesteps,
        noise_seed=f.noise_seed,
        noise_device=f.noise_device,
        device=device,
        batch_size=f.batch_size,
        cache_dir=f.cache_dir,
        extra=extra,
    )


def features_for_spec(
    spec: dict[str, Any],
    *,
    unet_state: dict[str, Tensor] | None,
    device: torch.device | str,
    batch_size: int = 8,
) -> PixelFeatures:
    """Rebuild the features an ensemble was trained on from its ``spec`` (predict time).

    ``unet_state`` holds the diffusion U-Net's weights (``diffusion`` method only). The caller
    compares the returned ``.spec`` with the saved one
    (:func:`tasks.fewshot.ensemble.check_feature_spec`).
    """
    method = spec["method"]
    if method == "rgb_pos":
        return PixelFeatures(method=method, image_size=tuple(spec["image_size"]), device=device)
    flags = dict(spec["unet_flags"])
    UNetConfig(**flags)  # a clear TypeError on unknown flags
    extra = None
    if method == "random_unet":
        unet, extra = (
            random_unet(flags, int(spec["init_seed"])),
            {"init_seed": int(spec["init_seed"])},
        )
    else:
        if unet_state is None:
            raise ValueError(
                "the diffusion method needs the U-Net checkpoint the ensemble was trained with"
            )
        unet = ADMUNet.from_flags(**flags)
        try:
            unet.load_state_dict(unet_state, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"the U-Net checkpoint does not fit the ensemble's unet_flags: {err}"
            ) from None
    return PixelFeatures(
        method=method,
        image_size=tuple(spec["image_size"]),
        unet=unet,
        unet_flags=flags,
        schedule_name=spec["noise_schedule"],
        num_timesteps=spec["num_timesteps"],
        blocks=spec["blocks"],
        timesteps=spec["timesteps"],
        noise_seed=spec["noise_seed"],
        noise_device=spec["noise_device"],
        device=device,
        batch_size=batch_size,
        extra=extra,
    )
