"""ClipCap's two mappers: image embedding `[B, D_clip]` -> GPT-2 prefix embeddings `[B, P, E]`.

Both follow the architectures of the ClipCap paper (Mokady et al., 2021) so that the published weights load
into them (see `convert_original.py` for the key mapping).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_clipcap import ClipCapConfig


class ClipCapMLPMapper(nn.Module):
    """Linear -> Tanh -> Linear from the CLIP width to `prefix_length * n_embd`, hidden size half the output."""

    def __init__(self, clip_dim: int, embed_dim: int, prefix_length: int):
        super().__init__()
        self.prefix_length = prefix_length
        out_dim = embed_dim * prefix_length
        self.layers = nn.Sequential(nn.Linear(clip_dim, out_dim // 2), nn.Tanh(), nn.Linear(out_dim // 2, out_dim))

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        prefix = self.layers(image_embeds)  # [B, P * E]
        return prefix.view(image_embeds.shape[0], self.prefix_length, -1)  # [B, P, E]


class ClipCapMapperAttention(nn.Module):
    """Multi-head self-attention with a fused key/value projection and no query/key/value bias."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim, bias=False)
        # One projection produces keys and values; its output features are laid out [2, heads, head_dim].
        self.key_value = nn.Linear(dim, 2 * dim, bias=False)
        self.output = nn.Linear(dim, dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, length, dim = hidden.shape
        head_dim = dim // self.num_heads
        query = self.query(hidden).view(batch, length, self.num_heads, head_dim).transpose(1, 2)  # [B, H, L, d]
        key_value = self.key_value(hidden).view(batch, length, 2, self.num_heads, head_dim)
        key, value = key_value.unbind(dim=2)  # each [B, L, H, d]
        attended = F.scaled_dot_product_attention(query, key.transpose(1, 2), value.transpose(1, 2))  # [B, H, L, d]
        return self.output(attended.transpose(1, 2).reshape(batch, length, dim))


class ClipCapMapperLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(norm1(x)), then x + mlp(norm2(x)) with a ReLU MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = ClipCapMapperAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden_dim = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.attention(self.norm1(hidden))
        return hidden + self.mlp(self.norm2(hidden))


class ClipCapTransformerMapper(nn.Module):
    """Image embedding -> `clip_length` tokens; a transformer reads them with `prefix_length` learned constants;
    the outputs at the constants' positions are the prefix."""

    def __init__(
        self,
        clip_dim: int,
        embed_dim: int,
        prefix_length: int,
        clip_length: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float,
    ):
        super().__init__()
        self.clip_length = clip_length
        self.clip_projection = nn.Linear(clip_dim, clip_length * embed_dim)
        self.prefix_constants = nn.Parameter(torch.randn(prefix_length, embed_dim))
        self.layers = nn.ModuleList(ClipCapMapperLayer(embed_dim, num_heads, mlp_ratio) for _ in range(num_layers))

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        batch = image_embeds.shape[0]
        image_tokens = self.clip_projection(image_embeds).view(batch, self.clip_length, -1)  # [B, C, E]
        constants = self.prefix_constants.unsqueeze(0).expand(batch, -1, -1)  # [B, P, E]
        hidden = torch.cat([image_tokens, constants], dim=1)  # [B, C + P, E]
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden[:, self.clip_length :]  # [B, P, E]


def build_mapper(config: ClipCapConfig) -> nn.Module:
    """The mapper named by `config.mapper_type`."""
    embed_dim = config.text_config.n_embd
    if config.mapper_type == "mlp":
        return ClipCapMLPMapper(config.clip_embed_dim, embed_dim, config.prefix_length)
    return ClipCapTransformerMapper(
        config.clip_embed_dim,
        embed_dim,
        config.prefix_length,
        config.mapper_clip_length,
        config.mapper_num_layers,
        config.mapper_num_heads,
        config.mapper_mlp_ratio,
    )
