"""The vod2chat model: an A/V encoder and a causal chat decoder that cross-attends to it.

    memory, memory_mask = model.encode(video, video_time, video_mask, audio, audio_time, audio_mask)
    logits, cache = model.decode(tokens, memory, memory_mask)          # a whole prefix
    logits, cache = model.decode(next_token, memory, memory_mask, cache)  # then one token at a time
    logits = model(tokens, video, video_time, video_mask, audio, audio_time, audio_mask)

Encoder: every video row (a frame, 2048-d) and audio row (a 0.96 s VGGish window, 128-d) is
standardised per channel with the training data's statistics and Linear projected to d_model,
plus a modality embedding and an embedding of its age (seconds before the message time t). The full sequence [null slot, video rows, audio
rows] goes through a pre-LN transformer encoder with key padding masks: no pooling, so the
decoder can attend to the moment that matters.

Decoder: token + learned position embeddings, pre-LN blocks of causal self-attention,
cross-attention to the encoder output and an MLP; the output head is tied to the token
embedding. Tokens are right-padded: the causal mask alone keeps padding from influencing
real positions, and the trainer masks padded positions out of the loss, so there is no token
padding mask. The loss itself lives in the trainer (trainer/steps.py: token_loss).

Masks are bool with True = valid / may attend, the convention of both the data and
F.scaled_dot_product_attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from vod2chat.config import param


@dataclass
class ModelConfig:
    vocab_size: int = param(4000, "the trainer sets it from the tokenizer")
    d_model: int = param(256)
    n_heads: int = param(4)
    n_enc_layers: int = param(2)
    n_dec_layers: int = param(4)
    d_ff: int = param(1024)
    dropout: float = param(0.1)
    max_len: int = param(128, "tokens per example: <bos> context <sep> message <eos>")
    video_dim: int = param(2048)
    audio_dim: int = param(128)
    max_time_s: float = param(64.0, "ages are clamped to [0, max_time_s]: set it >= the data window")
    use_video: bool = param(True, "both False: a text-only model (the ablation baseline)")
    use_audio: bool = param(True)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} must be a multiple of model.n_heads={self.n_heads}")


@dataclass
class DecodeCache:
    """What incremental decoding keeps between calls, one entry per decoder layer."""
    self_kv: list[tuple[Tensor, Tensor]]  # keys, values of every token so far: [B, H, length, d_head]
    cross_kv: list[tuple[Tensor, Tensor]]  # keys, values of the memory, computed once: [B, H, S, d_head]
    length: int  # tokens decoded so far (the position of the next one)


class Attention(nn.Module):
    """Multi-head attention; self-attention is the case where keys/values come from x itself."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def heads(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, H, T, D/H]
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        y = F.scaled_dot_product_attention(self.heads(self.q(x)), *kv, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.out(y.transpose(1, 2).flatten(2)))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.d_model), Attention(cfg)
        self.ln2, self.mlp = nn.LayerNorm(cfg.d_model), MLP(cfg)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, self.attn.project_kv(h), mask)
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1, self.self_attn = nn.LayerNorm(cfg.d_model), Attention(cfg)
        self.ln2, self.cross_attn = nn.LayerNorm(cfg.d_model), Attention(cfg)
        self.ln3, self.mlp = nn.LayerNorm(cfg.d_model), MLP(cfg)

    def forward(self, x: Tensor, self_mask: Tensor | None, is_causal: bool, past: tuple[Tensor, Tensor] | None,
                cross_kv: tuple[Tensor, Tensor], memory_mask: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h = self.ln1(x)
        k, v = self.self_attn.project_kv(h)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        x = x + self.self_attn(h, (k, v), self_mask, is_causal)
        x = x + self.cross_attn(self.ln2(x), cross_kv, memory_mask)
        return x + self.mlp(self.ln3(x)), (k, v)


class TimeEmbedding(nn.Module):
    """Age in seconds (continuous, >= 0) -> d_model: sin/cos at geometric periods from 0.5 s
    to 4 * max_time_s, then a Linear. Continuous rather than bucketised because frames (1 fps)
    and audio windows (0.96 s hop) sit at fractional ages that differ per message; the longest
    period exceeds the clamp range, so every age in range gets distinct features."""

    def __init__(self, d_model: int, max_time_s: float):
        super().__init__()
        periods = torch.logspace(math.log10(0.5), math.log10(4 * max_time_s), d_model // 2)
        self.register_buffer("freqs", 2 * math.pi / periods, persistent=False)
        self.max_time_s = max_time_s
        self.proj = nn.Linear(2 * (d_model // 2), d_model)

    def forward(self, t: Tensor) -> Tensor:  # [B, T] -> [B, T, D]
        x = t.float().clamp(0, self.max_time_s)[..., None] * self.freqs
        return self.proj(torch.cat([x.sin(), x.cos()], dim=-1))


class ModalityInput(nn.Module):
    """Feature rows of one modality -> d_model: what it is, plus which modality it is.

    Rows are standardised per channel with statistics of the training data (buffers, so they
    travel with every checkpoint). Pooled CNN features are non-negative with channels of very
    different scales, and scenes differ mostly in a few channels and in overall magnitude; a
    per-row LayerNorm divides that magnitude out and leaves differences of ~1% per channel,
    which a freshly initialised model ignores in favour of the chat context.
    """

    def __init__(self, in_dim: int, d_model: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("inv_std", torch.ones(in_dim))
        self.proj = nn.Linear(in_dim, d_model)
        self.type_emb = nn.Parameter(torch.zeros(d_model))

    @torch.no_grad()
    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        # Near-constant channels (dead ReLUs, often most of them) would otherwise be amplified
        # into noise: none gets more than 10x the gain of a typical live channel.
        live = std[std > 0]
        floor = 0.1 * (live.median() if len(live) else torch.tensor(1.0))
        self.mean.copy_(mean)
        self.inv_std.copy_(1.0 / std.clamp_min(floor))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = torch.where(mask[..., None], x, 0)  # padding content (even NaN) never enters the model
        x = ((x.float() - self.mean) * self.inv_std).clamp(-10, 10)  # an outlier frame cannot blow up
        return self.proj(x.to(self.proj.weight.dtype)) + self.type_emb


class VodChatModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.d_model
        # Disabled modalities get no parameters at all: DDP rejects parameters without gradients.
        self.video_in = ModalityInput(cfg.video_dim, d) if cfg.use_video else None
        self.audio_in = ModalityInput(cfg.audio_dim, d) if cfg.use_audio else None
        self.time_emb = TimeEmbedding(d, cfg.max_time_s) if cfg.use_video or cfg.use_audio else None
        # Always-valid memory slot: a message at t=0 (or a text-only model) has no A/V rows, and
        # attention over zero valid keys is a softmax over all -inf, i.e. NaN.
        self.null_memory = nn.Parameter(torch.zeros(d))
        self.enc_drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_enc_layers))
        self.enc_norm = nn.LayerNorm(d)

        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        self.dec_drop = nn.Dropout(cfg.dropout)
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_dec_layers))
        self.dec_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02), residual output projections scaled down by depth so the
        residual stream's variance does not grow with the number of layers."""
        resid_std = 0.02 / math.sqrt(2 * (self.config.n_enc_layers + self.config.n_dec_layers))
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                std = resid_std if name.endswith((".out", ".fc2")) else 0.02
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.normal_(self.null_memory, std=0.02)

    def set_feature_stats(self, stats: dict[str, tuple[Tensor, Tensor]]) -> None:
        """Per-channel (mean, std) of the training data's "video" and "audio" rows."""
        for name, layer in (("video", self.video_in), ("audio", self.audio_in)):
            if layer is not None and name in stats:
                layer.set_stats(*stats[name])

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied head counts once

    def configure_optimizer(self, lr: float, weight_decay: float,
                            betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
        """AdamW with weight decay on matrices (projections, embeddings) only; biases, norms and
        the 1-d modality/null embeddings are not decayed."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas)

    def encode(self, video: Tensor, video_time: Tensor, video_mask: Tensor,
               audio: Tensor, audio_time: Tensor, audio_mask: Tensor) -> tuple[Tensor, Tensor]:
        """video [B, Tv, video_dim], audio [B, Ta, audio_dim], *_time [B, T] seconds before the
        message (>= 0), *_mask [B, T] True = valid -> memory [B, S, D], memory_mask [B, S] with
        S = 1 + Tv + Ta (the null slot first; a disabled modality contributes no rows)."""
        B = video.shape[0]
        parts = [self.null_memory.expand(B, 1, -1)]
        masks = [torch.ones(B, 1, dtype=torch.bool, device=video.device)]
        for inp, x, t, m in ((self.video_in, video, video_time, video_mask),
                             (self.audio_in, audio, audio_time, audio_mask)):
            if inp is not None:
                parts.append(inp(x, m) + self.time_emb(torch.where(m, t, 0)))
                masks.append(m)
        mask = torch.cat(masks, dim=1)
        x = self.enc_drop(torch.cat(parts, dim=1))
        key_mask = mask[:, None, None, :]  # [B, 1 (heads), 1 (queries), S]
        for block in self.encoder:
            x = block(x, key_mask)
        return self.enc_norm(x), mask

    def decode(self, tokens: Tensor, memory: Tensor, memory_mask: Tensor,
               cache: DecodeCache | None = None) -> tuple[Tensor, DecodeCache]:
        """tokens [B, L] that follow the cache's tokens (all of them when cache is None) ->
        logits [B, L, V] and the cache extended by them. With a cache, `memory` is not read
        again: its keys/values were computed on the first call."""
        B, L = tokens.shape
        past = cache.length if cache is not None else 0
        if past + L > self.config.max_len:
            raise ValueError(f"{past + L} tokens exceed model.max_len={self.config.max_len}: lower "
                             "data.max_context_tokens / data.max_message_tokens or generate fewer tokens")
        if cache is None:
            cache = DecodeCache([], [blk.cross_attn.project_kv(memory) for blk in self.decoder], 0)
        self_mask, is_causal = causal_mask(L, past, tokens.device)
        memory_key_mask = memory_mask[:, None, None, :]
        x = self.dec_drop(self.tok_emb(tokens) + self.pos_emb(torch.arange(past, past + L, device=tokens.device)))
        self_kv = []
        for i, block in enumerate(self.decoder):
            x, kv = block(x, self_mask, is_causal, cache.self_kv[i] if past else None, cache.cross_kv[i],
                          memory_key_mask)
            self_kv.append(kv)
        return self.head(self.dec_norm(x)), DecodeCache(self_kv, cache.cross_kv, past + L)

    def forward(self, tokens: Tensor, video: Tensor, video_time: Tensor, video_mask: Tensor,
                audio: Tensor, audio_time: Tensor, audio_mask: Tensor) -> Tensor:
        """Teacher-forced logits [B, L, V]: position i predicts token i + 1."""
        memory, memory_mask = self.encode(video, video_time, video_mask, audio, audio_time, audio_mask)
        return self.decode(tokens, memory, memory_mask)[0]


def causal_mask(n_new: int, n_past: int, device: torch.device) -> tuple[Tensor | None, bool]:
    """(attn_mask, is_causal) for n_new tokens after n_past cached ones: new token i may attend to
    every cached token and to new tokens up to itself. SDPA's is_causal aligns the diagonal to
    the top-left corner, so it is only right without a cache."""
    if n_past == 0:
        return None, n_new > 1
    if n_new == 1:
        return None, False  # the newest token sees everything
    return torch.ones(n_new, n_past + n_new, dtype=torch.bool, device=device).tril(n_past), False
