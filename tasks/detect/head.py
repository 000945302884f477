"""DiffusionDet's DynamicHead: S cascaded ``RCNNHead`` stages conditioned on the diffusion timestep.

Mirrors the official ``diffusiondet/head.py`` step by step, with the same parameter names
(``head_series.{i}.self_attn``, ``.inst_interact.dynamic_layer``, ``.block_time_mlp.1``, ``.cls_module.0``,
``time_mlp.1`` ...), so official checkpoint keys map 1:1. All proposals of all images are processed as
one batch (B * N rows) in every per-proposal op.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.detect.box_codec import apply_deltas
from tasks.detect.pooler import RoIPooler


class SinusoidalTimeEmbedding(nn.Module):
    """(B,) integer timesteps -> (B, dim) ``[sin(t f), cos(t f)]``, ``f_i = exp(-log(1e4) i / (dim/2 - 1))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        args = t[:, None].float() * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


class DynamicConv(nn.Module):
    """Instance interaction: each proposal generates two kernels applied to its P*P RoI tokens.

    (R, d) proposal features -> ``dynamic_layer`` -> kernels (R, d, d_dyn) and (R, d_dyn, d);
    RoI tokens (R, P*P, d) -> bmm -> LN -> ReLU -> bmm -> LN -> ReLU -> flatten (P*P*d, token-major)
    -> ``out_layer`` -> LN -> ReLU -> (R, d).
    """

    def __init__(
        self, *, hidden_dim: int, dim_dynamic: int, num_dynamic: int, pooler_resolution: int
    ):
        super().__init__()
        if num_dynamic != 2:
            raise ValueError(
                f"DynamicConv uses exactly 2 dynamic layers, got num_dynamic={num_dynamic}"
            )
        self.hidden_dim, self.dim_dynamic = hidden_dim, dim_dynamic
        self.num_params = hidden_dim * dim_dynamic
        self.dynamic_layer = nn.Linear(hidden_dim, num_dynamic * self.num_params)
        self.norm1 = nn.LayerNorm(dim_dynamic)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.out_layer = nn.Linear(hidden_dim * pooler_resolution**2, hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)

    def forward(self, pro_features: Tensor, roi_tokens: Tensor) -> Tensor:
        """Args: pro_features (R, d); roi_tokens (R, P*P, d). Returns (R, d)."""
        params = self.dynamic_layer(pro_features)
        param1 = params[:, : self.num_params].view(-1, self.hidden_dim, self.dim_dynamic)
        param2 = params[:, self.num_params :].view(-1, self.dim_dynamic, self.hidden_dim)
        x = F.relu(self.norm1(torch.bmm(roi_tokens, param1)))
        x = F.relu(self.norm2(torch.bmm(x, param2)))
        return F.relu(self.norm3(self.out_layer(x.flatten(1))))


def _tower(dim: int, depth: int) -> nn.ModuleList:
    """``depth`` x [Linear(dim, dim, bias=False), LayerNorm, ReLU] as a flat ModuleList (official layout)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(inplace=True)]
    return nn.ModuleList(layers)


class RCNNHead(nn.Module):
    """One refinement stage: self-attention, dynamic conv, FFN, time scale/shift, cls and reg towers."""

    def __init__(
        self,
        *,
        num_classes: int,
        hidden_dim: int,
        num_attn_heads: int,
        dim_feedforward: int,
        dim_dynamic: int,
        num_dynamic: int,
        num_cls_layers: int,
        num_reg_layers: int,
        pooler_resolution: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        d = hidden_dim
        self.hidden_dim = d
        self.self_attn = nn.MultiheadAttention(d, num_attn_heads, dropout=dropout, batch_first=True)
        self.inst_interact = DynamicConv(
            hidden_dim=d,
            dim_dynamic=dim_dynamic,
            num_dynamic=num_dynamic,
            pooler_resolution=pooler_resolution,
        )
        self.linear1 = nn.Linear(d, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))
        self.block_time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(4 * d, 2 * d))
        self.cls_module = _tower(d, num_cls_layers)
        self.reg_module = _tower(d, num_reg_layers)
        self.class_logits = nn.Linear(d, num_classes)
        self.bboxes_delta = nn.Linear(d, 4)

    def forward(
        self,
        roi_features: Tensor,
        boxes_xyxy: Tensor,
        pro_features: Tensor | None,
        time_emb: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Runs one stage.

        Args:
            roi_features: (B * N, d, P, P) pooled features of ``boxes_xyxy``.
            boxes_xyxy: (B, N, 4) this stage's input boxes (absolute pixels).
            pro_features: (B, N, d) features from the previous stage, or None (stage 1: mean RoI feature).
            time_emb: (B, 4d) output of the time MLP.

        Returns:
            logits (B, N, K) float32, boxes_xyxy (B, N, 4) float32, obj_features (B, N, d) (un-modulated).
        """
        b, n = boxes_xyxy.shape[:2]
        d = self.hidden_dim
        roi_tokens = roi_features.view(b * n, d, -1)
        if pro_features is None:
            pro_features = roi_tokens.mean(-1).view(b, n, d)
        roi_tokens = roi_tokens.transpose(1, 2)  # (B*N, P*P, d)

        attn = self.self_attn(pro_features, pro_features, pro_features, need_weights=False)[0]
        x = self.norm1(pro_features + self.dropout1(attn)).reshape(b * n, d)
        x = self.norm2(x + self.dropout2(self.inst_interact(x, roi_tokens)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x))))
        obj_features = self.norm3(x + self.dropout3(ffn))  # (B*N, d)

        scale, shift = self.block_time_mlp(time_emb).repeat_interleave(n, dim=0).chunk(2, dim=1)
        fc = obj_features * (scale + 1) + shift
        cls_feat, reg_feat = fc, fc
        for layer in self.cls_module:
            cls_feat = layer(cls_feat)
        for layer in self.reg_module:
            reg_feat = layer(reg_feat)
        logits = self.class_logits(cls_feat).float()
        deltas = self.bboxes_delta(reg_feat).float()  # decode in float32 even under autocast
        boxes = apply_deltas(deltas, boxes_xyxy.reshape(-1, 4).float())
        return logits.view(b, n, -1), boxes.view(b, n, 4), obj_features.view(b, n, d)


class DynamicHead(nn.Module):
    """S stages + time MLP + RoI pooler.

    Args:
        num_classes: K (no background logit; focal loss).
        feature_strides: strides of the pooled pyramid levels (e.g. (4, 8, 16, 32) for p2..p5).
        num_stages: S (6).
        hidden_dim, num_attn_heads, dim_feedforward, dim_dynamic, num_dynamic, num_cls_layers,
        num_reg_layers, pooler_resolution, pooler_sampling_ratio, dropout: see ``HeadConfig``.
        prior_prob: initial foreground probability; class-logit biases start at -log((1-p)/p).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        feature_strides: tuple[int, ...],
        num_stages: int = 6,
        hidden_dim: int = 256,
        num_attn_heads: int = 8,
        dim_feedforward: int = 2048,
        dim_dynamic: int = 64,
        num_dynamic: int = 2,
        num_cls_layers: int = 1,
        num_reg_layers: int = 3,
        pooler_resolution: int = 7,
        pooler_sampling_ratio: int = 2,
        prior_prob: float = 0.01,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        self.num_classes, self.hidden_dim = num_classes, hidden_dim
        self.box_pooler = RoIPooler(
            output_size=pooler_resolution,
            strides=tuple(feature_strides),
            sampling_ratio=pooler_sampling_ratio,
        )
        stage_kwargs = dict(
            num_classes=num_classes,
            hidden_dim=hidden_dim,
            num_attn_heads=num_attn_heads,
            dim_feedforward=dim_feedforward,
            dim_dynamic=dim_dynamic,
            num_dynamic=num_dynamic,
            num_cls_layers=num_cls_layers,
            num_reg_layers=num_reg_layers,
            pooler_resolution=pooler_resolution,
            dropout=dropout,
        )
        self.head_series = nn.ModuleList(RCNNHead(**stage_kwargs) for _ in range(num_stages))
        time_dim = 4 * hidden_dim
        self.time_mlp = nn.Sequential(
            SinusoidalTimeEmbedding(hidden_dim),
            nn.Linear(hidden_dim, time_dim),
            nn.GELU(),
            nn.Linear(time_dim, time_dim),
        )
        self.prior_prob = prior_prob
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform on every >= 2-D parameter; class-logit biases = -log((1 - p) / p).

        The official code sets *every* parameter whose last dim equals K to the bias value, which
        also overwrites hidden_dim-wide weights when K == hidden_dim; we set only the class biases.
        """
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        bias_value = -math.log((1 - self.prior_prob) / self.prior_prob)
        for stage in self.head_series:
            nn.init.constant_(stage.class_logits.bias, bias_value)

    def forward(
        self, features: list[Tensor], boxes_xyxy: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Runs all stages.

        Args:
            features: pooled pyramid levels, (B, C, H_l, W_l) each, C == hidden_dim.
            boxes_xyxy: (B, N, 4) initial boxes (absolute pixels of each unpadded image).
            t: (B,) integer timesteps.

        Returns:
            logits (S, B, N, K) and boxes_xyxy (S, B, N, 4), float32, one entry per stage.
        """
        time_emb = self.time_mlp(t)
        boxes, pro_features = boxes_xyxy, None
        all_logits, all_boxes = [], []
        for stage in self.head_series:
            roi_features = self.box_pooler(features, boxes)
            logits, pred_boxes, pro_features = stage(roi_features, boxes, pro_features, time_emb)
            all_logits.append(logits)
            all_boxes.append(pred_boxes)
            boxes = pred_boxes.detach()
        return torch.stack(all_logits), torch.stack(all_boxes)
