"""One U-Net (segmentation-models-pytorch encoder + decoder), two heads: denoising and segmentation.

* **DeP**: the whole U-Net learns to predict the noise eps of a corrupted image (random init).
* **DDeP**: the encoder is frozen (``freeze_encoder=True``): its parameters never get gradients AND it always
  runs in eval mode, so its BatchNorm running statistics never change, whatever ``model.train()`` is called
  with. (The open reimplementation only sets ``requires_grad=False``, so its BN statistics drift; see
  ``../shared/reference/segmentation.md`` §2.4.) Only the decoder and the denoising head learn.

Fine-tuning builds the same network with a segmentation head instead (``num_classes > 0``) and loads the
encoder + decoder from a pretraining checkpoint (:func:`load_pretrained`); the denoising head is dropped.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "SegUNet",
    "encoder_state_from_file",
    "load_encoder_weights",
    "load_pretrained",
    "pretrained_state",
]

Task = Literal["segment", "denoise"]


def _create_unet(
    encoder_name: str,
    encoder_weights: str | None,
    in_channels: int,
    decoder_channels: Sequence[int],
) -> nn.Module:
    import segmentation_models_pytorch as smp

    try:
        return smp.Unet(
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=1,
            decoder_channels=tuple(decoder_channels),
        )
    except (OSError, RuntimeError, ConnectionError) as err:  # offline download failure
        if encoder_weights is None:
            raise
        raise RuntimeError(
            f"could not load the {encoder_weights!r} weights of encoder {encoder_name!r} ({err}). "
            f"Without a network connection, supply a local file instead: on a connected machine run "
            f'`python -c "import segmentation_models_pytorch as smp, torch; '
            f"torch.save(smp.Unet('{encoder_name}', encoder_weights='{encoder_weights}').encoder"
            f".state_dict(), 'encoder.pth')\"` (or save a torchvision/timm ImageNet state dict of the "
            f"same architecture), copy it here and set model.encoder_init=/path/to/encoder.pth"
        ) from err


class SegUNet(nn.Module):
    """U-Net with a denoising head (``image_channels`` outputs) and/or a segmentation head (class logits).

    Args:
        encoder_name: any smp encoder (``"resnet18"``, ``"resnet50"``, ``"efficientnet-b0"``, ``"mit_b0"``,
            ``"tu-<timm name>"``, ...).
        image_channels: channels of the images (and of the denoising head's eps prediction).
        num_classes: segmentation classes K (0 = no segmentation head).
        denoise_head: build the denoising head (pretraining); fine-tuning drops it.
        decoder_channels: smp decoder widths, deepest first.
        noise_conditioning: feed the per-image noise std as one extra constant input channel
            (0 when segmenting clean images).
        freeze_encoder: DDeP: encoder parameters frozen and the encoder kept in eval mode.
        encoder_weights: smp weights name (``"imagenet"``) or None (random init).

    Inputs are (B, image_channels, H, W) images normalised to [-1, 1], with H and W divisible by 32.
    """

    def __init__(
        self,
        *,
        encoder_name: str = "resnet18",
        image_channels: int = 3,
        num_classes: int = 0,
        denoise_head: bool = True,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        noise_conditioning: bool = False,
        freeze_encoder: bool = False,
        encoder_weights: str | None = None,
    ) -> None:
        super().__init__()
        if image_channels < 1:
            raise ValueError(f"image_channels must be >= 1, got {image_channels}")
        in_channels = image_channels + int(noise_conditioning)
        unet = _create_unet(encoder_name, encoder_weights, in_channels, decoder_channels)
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        # smp < 0.5 decoders take ``*features``, newer ones a list
        params = inspect.signature(self.decoder.forward).parameters.values()
        self._decoder_star_args = any(p.kind is p.VAR_POSITIONAL for p in params)
        width = int(decoder_channels[-1])
        self.image_channels = image_channels
        self.noise_conditioning = noise_conditioning
        self.denoise_head = nn.Conv2d(width, image_channels, 3, padding=1) if denoise_head else None
        self.seg_head = nn.Conv2d(width, num_classes, 3, padding=1) if num_classes > 0 else None
        self.freeze_encoder = False
        self.set_encoder_frozen(freeze_encoder)

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Freeze (DDeP) or unfreeze the encoder: requires_grad and train/eval mode together."""
        self.freeze_encoder = frozen
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> SegUNet:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # BN running statistics must never change
        return self

    def features(self, x: Tensor, noise_level: Tensor | None = None) -> Tensor:
        """Decoder output (B, decoder_channels[-1], H, W)."""
        if x.ndim != 4 or x.shape[1] != self.image_channels:
            raise ValueError(
                f"expected images (B, {self.image_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(
                f"image height and width must be multiples of 32, got {tuple(x.shape)}"
            )
        if self.noise_conditioning:
            level = x.new_zeros(x.shape[0]) if noise_level is None else noise_level.to(x)
            x = torch.cat([x, level.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])], dim=1)
        if self.freeze_encoder:
            with torch.no_grad():
                feats = self.encoder(x)
        else:
            feats = self.encoder(x)
        return self.decoder(*feats) if self._decoder_star_args else self.decoder(feats)

    def forward(
        self, x: Tensor, *, task: Task = "segment", noise_level: Tensor | None = None
    ) -> Tensor:
        """``task="segment"``: logits (B, K, H, W); ``task="denoise"``: eps prediction (B, C, H, W).

        ``noise_level`` (B,) is the corruption's noise std, used only with ``noise_conditioning``.
        """
        out = self.features(x, noise_level)
        if task == "denoise":
            if self.denoise_head is None:
                raise ValueError(
                    "this network has no denoising head (built with denoise_head=False)"
                )
            return self.denoise_head(out)
        if self.seg_head is None:
            raise ValueError("this network has no segmentation head (built with num_classes=0)")
        return self.seg_head(out)


def encoder_state_from_file(path: str | Path) -> dict[str, Tensor]:
    """An encoder state dict from a local file: a plain state dict (torchvision/timm/smp keys), or one
    of our checkpoints (``model`` / ``ema`` entries; ``encoder.`` keys are taken)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read encoder weights {path}: {err}") from err
    if isinstance(state, Mapping) and ("model" in state or "ema" in state):
        state = pretrained_state(state, source=str(path))
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    elif isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{path}: no state dict found")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}


def pretrained_state(ckpt: Mapping[str, Any], *, source: str, prefer_ema: bool = True) -> dict:
    """The model weights of a pretraining checkpoint: its EMA weights when present (and preferred)."""
    state = ckpt.get("ema") if prefer_ema and ckpt.get("ema") is not None else ckpt.get("model")
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: no 'model' weights in the checkpoint")
    return dict(state)


def load_pretrained(
    model: SegUNet,
    state: Mapping[str, Tensor],
    *,
    source: str,
    parts: Sequence[str] = ("encoder", "decoder"),
) -> list[str]:
    """Copy the ``parts`` (``encoder.*``, ``decoder.*``) of a pretrained state dict into ``model``.

    Shapes must match exactly (an error names the first differing key and ``source``). Returns the loaded keys.
    """
    own = model.state_dict()
    wanted = {k: v for k, v in state.items() if k.split(".", 1)[0] in parts}
    missing = [k for k in own if k.split(".", 1)[0] in parts and k not in wanted]
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} weights of {'/'.join(parts)} are missing (first: {missing[0]}); "
            f"was it pretrained with the same model.encoder / decoder_channels / noise_conditioning?"
        )
    for k, v in wanted.items():
        if k not in own or own[k].shape != v.shape:
            shape = tuple(own[k].shape) if k in own else "absent"
            raise ValueError(
                f"{source}: weight {k} has shape {tuple(v.shape)} but this network has {shape}; "
                f"model.encoder / decoder_channels / noise_conditioning must match the pretraining run"
            )
    model.load_state_dict(wanted, strict=False)
    return sorted(wanted)


def load_encoder_weights(model: SegUNet, path: str | Path) -> None:
    """Load a local encoder state dict (ImageNet or DeP encoder) into ``model.encoder`` (strict)."""
    state = encoder_state_from_file(path)
    try:
        model.encoder.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{path}: does not fit encoder {type(model.encoder).__name__}: {err}"
        ) from err
