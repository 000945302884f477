"""The ADM U-Net (guided-diffusion / improved-diffusion ``UNetModel``), written for diffvision.

The module tree is laid out so that ``state_dict()`` keys and shapes are identical to
guided-diffusion's ``UNetModel``: checkpoints such as ``lsun_bedroom.pt`` or DDPM-Seg's
``ffhq.pt`` load with ``load_state_dict(strict=True)``. Naming that the checkpoints fix:

* ``time_embed.{0,2}`` (Linear), ``label_emb`` (Embedding, class-conditional only);
* ``input_blocks.i.j`` / ``middle_block.j`` / ``output_blocks.i.j``: ResBlocks
  (``in_layers.{0,2}``, ``emb_layers.1``, ``out_layers.{0,3}``, ``skip_connection``),
  attention blocks (``norm``, ``qkv`` and ``proj_out`` as 1x1 Conv1d), plain resamplers
  (``op`` for the strided conv, ``conv`` for the upsampling conv);
* ``out.{0,2}``: GroupNorm and the final conv.

Coordinate frame: images are ``(B, C, H, W)`` in [-1, 1]; ``H`` and ``W`` must be divisible by
``2 ** (len(channel_mult) - 1)``. Timesteps are raw integer indices (no rescaling), as in
guided-diffusion with ``rescale_timesteps=False``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _grad_checkpoint

#: ``channel_mult`` that guided-diffusion's ``create_model`` picks when the flag is "".
DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}

#: ``MODEL_FLAGS`` of DDPM-Seg / guided-diffusion's 256x256 LSUN models (and DDPM-Seg's ffhq.pt).
DDPMSEG_256_FLAGS: dict[str, object] = dict(
    image_size=256,
    num_channels=256,
    num_res_blocks=2,
    attention_resolutions="32,16,8",
    num_head_channels=64,
    resblock_updown=True,
    use_scale_shift_norm=True,
    learn_sigma=True,
    class_cond=False,
    dropout=0.1,
    use_fp16=True,
)


@dataclass(frozen=True)
class BlockInfo:
    """Static description of one U-Net block, computed from the flags.

    Attributes:
        index: position in ``input_blocks`` / ``output_blocks``.
        channels: channels of the block's output.
        stride: input pixels per output pixel (1 = full resolution) after the block.
        attention: whether the block holds a self-attention layer.
        resample: "up", "down" or "" when the block changes resolution.
    """

    index: int
    channels: int
    stride: int
    attention: bool
    resample: str

    def resolution(self, image_size: int) -> int:
        """Output side length for a square input of ``image_size`` pixels."""
        return image_size // self.stride


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]`` of shape (B, dim), in float32."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    angles = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in float32 and cast back (fp16-safe)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


def _zeroed(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _resample(x: Tensor, mode: str) -> Tensor:
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    if mode == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    return x


class ResBlock(nn.Module):
    """Residual block with timestep conditioning, optionally resampling by 2 (``mode``)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        *,
        out_channels: int | None = None,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = False,
        mode: str = "",
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        out = out_channels or channels
        self.mode = mode
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1)
        )
        emb_out = 2 * out if use_scale_shift_norm else out
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(out),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zeroed(nn.Conv2d(out, out, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return _grad_checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
        h = conv(_resample(norm_act(x), self.mode))
        x = _resample(x, self.mode)
        cond = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = cond.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + cond)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with 1x1 Conv1d projections (guided-diffusion layout).

    ``new_order=False`` reproduces ``QKVAttentionLegacy`` (heads split before q/k/v);
    ``new_order=True`` reproduces ``QKVAttention`` (q/k/v split before heads).
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 1,
        num_head_channels: int = -1,
        new_order: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        elif channels % num_head_channels:
            raise ValueError(
                f"attention channels {channels} not divisible by num_head_channels {num_head_channels}"
            )
        else:
            self.num_heads = channels // num_head_channels
        self.new_order = new_order
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return _grad_checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        flat = x.reshape(b, c, height * width)
        qkv = self.qkv(self.norm(flat))
        head_ch = c // self.num_heads
        if self.new_order:
            q, k, v = qkv.reshape(b, 3, self.num_heads, head_ch, -1).unbind(1)
        else:
            q, k, v = qkv.reshape(b, self.num_heads, 3 * head_ch, -1).split(head_ch, dim=2)
        # (B, heads, head_ch, T) -> (B, heads, T, head_ch) for SDPA; scale 1/sqrt(head_ch).
        attn = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        attn = attn.transpose(-1, -2).reshape(b, c, -1)
        return (flat + self.proj_out(attn)).reshape(b, c, height, width)


class Resample(nn.Module):
    """Plain (non-residual) 2x down- or upsampler; ``op`` / ``conv`` hold the optional conv."""

    def __init__(self, channels: int, mode: str, use_conv: bool) -> None:
        super().__init__()
        self.mode = mode
        self.use_conv = use_conv
        if use_conv and mode == "down":
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        elif use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "down":
            return self.op(x) if self.use_conv else _resample(x, "down")
        x = _resample(x, "up")
        return self.conv(x) if self.use_conv else x


class EmbedSequential(nn.Sequential):
    """``nn.Sequential`` that passes the timestep embedding to its ResBlocks."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


def parse_channel_mult(channel_mult: str | Sequence[float], image_size: int) -> tuple[float, ...]:
    """guided-diffusion's rule: "" picks the default for ``image_size``; "1,2,2" is parsed."""
    if isinstance(channel_mult, str):
        if channel_mult == "":
            if image_size not in DEFAULT_CHANNEL_MULT:
                raise ValueError(
                    f"no default channel_mult for image_size {image_size}; "
                    f"pass it explicitly (defaults exist for {sorted(DEFAULT_CHANNEL_MULT)})"
                )
            return DEFAULT_CHANNEL_MULT[image_size]
        return tuple(float(m) if "." in m else int(m) for m in channel_mult.split(","))
    return tuple(channel_mult)


def parse_attention_resolutions(
    attention_resolutions: str | Iterable[int], image_size: int
) -> tuple[int, ...]:
    """Resolutions ("32,16,8") -> downsampling rates (``image_size // res``), as ``create_model``."""
    if isinstance(attention_resolutions, str):
        items = [int(r) for r in attention_resolutions.split(",") if r.strip()]
    else:
        items = [int(r) for r in attention_resolutions]
    for res in items:
        if res <= 0 or image_size % res:
            raise ValueError(f"attention resolution {res} does not divide image_size {image_size}")
    return tuple(image_size // r for r in items)


class ADMUNet(nn.Module):
    """Ablated Diffusion Model U-Net with guided-diffusion's ``UNetModel`` state_dict layout.

    Args:
        image_size: nominal input side; only used to turn attention resolutions into rates.
        in_channels: input image channels.
        model_channels: base width (the ``num_channels`` flag).
        out_channels: output channels (3, or 6 with learned sigma).
        num_res_blocks: ResBlocks per level in the encoder (decoder has one more).
        attention_ds: downsampling rates (1 = full resolution) that get self-attention.
        dropout: dropout in the ResBlocks.
        channel_mult: width multiplier per level.
        conv_resample: learned convs in the plain resamplers (unused with ``resblock_updown``).
        num_classes: class-conditional when set (adds ``label_emb``).
        use_checkpoint: gradient checkpointing in ResBlocks and attention while training.
        use_fp16: run the torso (input/middle/output blocks) in float16, like ``convert_to_fp16``.
        num_heads: attention heads when ``num_head_channels`` is -1.
        num_head_channels: channels per head (overrides ``num_heads``) when not -1.
        num_heads_upsample: heads in the decoder; -1 means ``num_heads``.
        use_scale_shift_norm: FiLM-style conditioning ``norm(h) * (1 + scale) + shift``.
        resblock_updown: resample with ResBlocks instead of plain convs.
        use_new_attention_order: split q/k/v before heads (``QKVAttention``).
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int = 3,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_ds: Iterable[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.channel_mult = tuple(channel_mult)
        self.num_classes = num_classes
        self.attention_ds = tuple(attention_ds)
        self.dtype = torch.float32
        emb_ch = 4 * model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch)
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_ch)

        def res(ch_in: int, ch_out: int, mode: str = "") -> ResBlock:
            return ResBlock(
                ch_in,
                emb_ch,
                out_channels=ch_out,
                dropout=dropout,
                mode=mode,
                use_scale_shift_norm=use_scale_shift_norm,
                use_checkpoint=use_checkpoint,
            )

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(
                ch,
                num_heads=heads,
                num_head_channels=num_head_channels,
                new_order=use_new_attention_order,
                use_checkpoint=use_checkpoint,
            )

        def resampler(ch: int, mode: str) -> nn.Module:
            return res(ch, ch, mode) if resblock_updown else Resample(ch, mode, conv_resample)

        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        ch = int(self.channel_mult[0] * model_channels)
        input_width = ch
        self.input_blocks = nn.ModuleList(
            [EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))]
        )
        enc_info = [BlockInfo(0, ch, 1, False, "")]
        ds = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in self.attention_ds:
                    layers.append(attn(ch, num_heads))
                enc_info.append(BlockInfo(len(enc_info), ch, ds, ds in self.attention_ds, ""))
                self.input_blocks.append(EmbedSequential(*layers))
            if level != len(self.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(resampler(ch, "down")))
                ds *= 2
                enc_info.append(BlockInfo(len(enc_info), ch, ds, False, "down"))
        self.max_stride = ds

        self.middle_block = EmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))

        skip_channels = [info.channels for info in enc_info]
        self.output_blocks = nn.ModuleList()
        dec_info: list[BlockInfo] = []
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(mult * model_channels))]
                ch = int(mult * model_channels)
                has_attn = ds in self.attention_ds
                if has_attn:
                    layers.append(attn(ch, heads_up))
                mode = ""
                if level and i == num_res_blocks:
                    layers.append(resampler(ch, "up"))
                    ds //= 2
                    mode = "up"
                dec_info.append(BlockInfo(len(dec_info), ch, ds, has_attn, mode))
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), _zeroed(nn.Conv2d(input_width, out_channels, 3, padding=1))
        )
        self.encoder_blocks: tuple[BlockInfo, ...] = tuple(enc_info)
        self.decoder_blocks: tuple[BlockInfo, ...] = tuple(dec_info)
        self.flags: dict[str, object] = {}
        if use_fp16:
            self.convert_to_fp16()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_flags(
        cls,
        image_size: int,
        num_channels: int,
        num_res_blocks: int,
        channel_mult: str | Sequence[float] = "",
        attention_resolutions: str | Iterable[int] = "16",
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        dropout: float = 0.0,
        learn_sigma: bool = False,
        class_cond: bool = False,
        use_fp16: bool = False,
        use_new_attention_order: bool = False,
        use_checkpoint: bool = False,
        in_channels: int = 3,
        num_classes: int = 1000,
    ) -> ADMUNet:
        """Build from guided-diffusion's ``create_model`` flags (same names and defaults).

        ``attention_resolutions`` are feature-map sides ("32,16,8"), converted to rates with
        ``image_size // res``. ``learn_sigma`` doubles the output channels (eps and variance).
        """
        flags = dict(locals())
        flags.pop("cls")
        if not isinstance(channel_mult, str):
            flags["channel_mult"] = list(channel_mult)
        if not isinstance(attention_resolutions, str):
            flags["attention_resolutions"] = list(attention_resolutions)
        model = cls(
            image_size=image_size,
            in_channels=in_channels,
            model_channels=num_channels,
            out_channels=in_channels * (2 if learn_sigma else 1),
            num_res_blocks=num_res_blocks,
            attention_ds=parse_attention_resolutions(attention_resolutions, image_size),
            dropout=dropout,
            channel_mult=parse_channel_mult(channel_mult, image_size),
            num_classes=num_classes if class_cond else None,
            use_checkpoint=use_checkpoint,
            use_fp16=use_fp16,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            num_heads_upsample=num_heads_upsample,
            use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown,
            use_new_attention_order=use_new_attention_order,
        )
        model.flags = flags
        return model

    def _torso(self) -> Iterable[nn.Module]:
        return (self.input_blocks, self.middle_block, self.output_blocks)

    def convert_to_fp16(self) -> None:
        """Cast the conv weights of input/middle/output blocks to float16 (GroupNorm and
        Linear layers stay float32), exactly the set guided-diffusion converts."""
        self._convert_convs(torch.float16)

    def convert_to_fp32(self) -> None:
        """Undo :meth:`convert_to_fp16`."""
        self._convert_convs(torch.float32)

    def _convert_convs(self, dtype: torch.dtype) -> None:
        for part in self._torso():
            for module in part.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                    module.to(dtype)
        self.dtype = dtype

    # ------------------------------------------------------------------ forward
    def _embed(self, x: Tensor, timesteps: Tensor | int, y: Tensor | None) -> Tensor:
        if (y is None) != (self.num_classes is None):
            raise ValueError("pass class labels y if and only if the model is class-conditional")
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(
                f"timesteps must be a scalar or shape ({x.shape[0]},), got {tuple(t.shape)}"
            )
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        return emb

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        if x.shape[2] % self.max_stride or x.shape[3] % self.max_stride:
            raise ValueError(
                f"input side {tuple(x.shape[2:])} must be divisible by {self.max_stride} "
                f"(2 ** (levels - 1) for channel_mult {self.channel_mult})"
            )

    def _run(
        self, x: Tensor, timesteps: Tensor | int, y: Tensor | None, keep: frozenset[int] | None
    ) -> tuple[Tensor | None, dict[int, Tensor]]:
        self._check_input(x)
        emb = self._embed(x, timesteps, y)
        h = x.to(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        kept: dict[int, Tensor] = {}
        last = len(self.output_blocks) - 1 if keep is None else max(keep, default=-1)
        for index, block in enumerate(self.output_blocks[: last + 1]):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if keep is not None and index in keep:
                kept[index] = h.float()
        if keep is not None:
            return None, kept
        return self.out(h.to(x.dtype)), kept

    def forward(self, x: Tensor, timesteps: Tensor | int, y: Tensor | None = None) -> Tensor:
        """Model output (B, out_channels, H, W): epsilon (and the variance interpolation
        channels when ``learn_sigma``) for noisy images ``x`` at integer ``timesteps``."""
        out, _ = self._run(x, timesteps, y, keep=None)
        assert out is not None
        return out

    def decoder_features(
        self, x: Tensor, timesteps: Tensor | int, blocks: Iterable[int], y: Tensor | None = None
    ) -> dict[int, Tensor]:
        """Outputs of ``output_blocks[i]`` for ``i`` in ``blocks``, as float32 ``(B, C_i, H_i, W_i)``.

        The forward pass stops after the deepest requested block (no hooks involved);
        ``C_i`` and the stride ``H / H_i`` are ``self.decoder_blocks[i].channels / .stride``.
        """
        wanted = frozenset(int(b) for b in blocks)
        bad = [b for b in wanted if not 0 <= b < len(self.output_blocks)]
        if bad:
            raise ValueError(
                f"decoder blocks {sorted(bad)} out of range 0..{len(self.output_blocks) - 1}"
            )
        _, kept = self._run(x, timesteps, y, keep=wanted)
        return kept
