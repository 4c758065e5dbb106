"""The vod2chat model: an A/V encoder and a causal chat decoder that cross-attends to it.

    memory, memory_mask = model.encode(video, video_time, video_mask, audio, audio_time, audio_mask)
    logits, cache = model.decode(tokens, memory, memory_mask)          # a whole prefix
    logits, cache = model.decode(next_token, memory, memory_mask, cache)  # then one token at a time
    logits = model(tokens, video, video_time, video_mask, audio, audio_time, audio_mask)

Encoder: every video row (a frame, 2048-d) and audio row (a 0.96 s VGGish window, 128-d) is
standardised per channel with the training data's statistics and Linear projected to d_model,
plus a modality embedding and an embedding of its age (seconds before the message time t). The full sequence [null slot, video rows, audio
rows] goes through a pre-LN transformer encoder with key padding masks: no pooling, so the
decoder can attend to the moment that matters. Four options help it find a brief moment in a
long window (ModelConfig.row_diff, age_gate, enc_alibi, input_mlp; docs/moment.md):
each row also carries its change from the previous row of its modality; a learned gate per age
(in 1 s steps) and channel scales each row's content, so rows too old or too recent to matter
can be shut off whatever they show; encoder attention is biased by -slope_h * |age_i - age_j|
(ALiBi, per head); and a GELU layer on each row's projection keeps rows that differ only in
magnitude apart through the encoder's LayerNorms.

Decoder: token + learned position embeddings, pre-LN blocks of causal self-attention,
cross-attention to the encoder output and an MLP; the output head is tied to the token
embedding. Tokens are right-padded: the causal mask alone keeps padding from influencing
real positions, and the trainer masks padded positions out of the loss, so there is no token
padding mask. The loss itself lives in the trainer (trainer/steps.py: token_loss).

Contrastive aux loss (ModelConfig.contrastive_dim, off by default): ContrastiveHeads embed the
window's pooled encoder output and the message's own tokens in one space; forward returns them
next to the logits when given the message mask, and trainer/batch.py turns them into InfoNCE.

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


# Age gates learn this many times faster than Adam's lr alone moves them (ModalityInput).
AGE_GATE_SPEED = 10.0


@dataclass
class ModelConfig:
    vocab_size: int = param(4000, "the trainer sets it from the tokenizer", gt=0)
    d_model: int = param(256, gt=0)
    n_heads: int = param(4, gt=0)
    n_enc_layers: int = param(2, ge=0)
    n_dec_layers: int = param(4, ge=1)
    d_ff: int = param(1024, gt=0)
    dropout: float = param(0.1, ge=0, lt=1)
    max_len: int = param(128, "tokens per example: <bos> context <sep> message <eos>", ge=4)
    video_dim: int = param(2048, gt=0)
    audio_dim: int = param(128, gt=0)
    max_time_s: float = param(64.0, "ages are clamped to [0, max_time_s]: set it >= the data window", gt=0)
    use_video: bool = param(True, "both False: a text-only model (the ablation baseline)")
    use_audio: bool = param(True)
    # Making a brief moment findable in a long window (docs/moment.md):
    row_diff: bool = param(False, "also project each row's change from the previous row of its modality")
    age_gate: bool = param(False, "a learned gate per age (1 s steps) and channel on each row's content")
    enc_alibi: bool = param(False, "encoder attention biased by -slope_h * |age_i - age_j| (ALiBi, per head)")
    input_mlp: bool = param(False, "a GELU layer (residual) on each row's projection, before the encoder's norms")
    # Aligning a window's A/V with the message it caused (CLIP-style InfoNCE, trainer/batch.py:
    # contrastive_loss): the token loss lets the decoder lean on the chat context and the
    # channel's marginal; the aux loss asks the encoder, directly, which of the batch's messages
    # this window caused. Measured on family draws 1-2 (docs/moment.md): less of the gain closed
    # at 20 s than without it (0.83-0.84 vs 0.86-0.95), so off by default. Both fields live here,
    # not in train.*: train.init_from copies model.* from the starting run, so the weight cannot
    # disagree with the parameters the checkpoint carries, and a projection without its loss
    # would get no gradient (DDP rejects it).
    contrastive_dim: int = param(0, "shared A/V-message embedding size of the contrastive aux loss (0: off)", ge=0,
                                 le=4096)
    contrastive_weight: float = param(0.0, "weight of the contrastive aux loss next to the per-token loss "
                                           "(0: off; needs contrastive_dim)", ge=0, le=100)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} must be a multiple of model.n_heads={self.n_heads}")
        if (self.contrastive_dim > 0) != (self.contrastive_weight > 0):
            raise ValueError(f"model.contrastive_dim={self.contrastive_dim} and model.contrastive_weight="
                             f"{self.contrastive_weight}: set both (the aux loss on) or neither (off)")


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

    def __init__(self, in_dim: int, d_model: int, row_diff: bool = False, age_gate: bool = False,
                 max_time_s: float = 64.0, mlp: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("inv_std", torch.ones(in_dim))
        self.proj = nn.Linear(in_dim, d_model)
        self.type_emb = nn.Parameter(torch.zeros(d_model))
        # A brief event is a change: a flash is one frame unlike its neighbours. The difference
        # from the previous row says "something started/ended here" in any background.
        self.diff_proj = nn.Linear(in_dim, d_model) if row_diff else None
        # Features of different events can differ mostly in magnitude along one shared direction
        # (random-initialised CNNs collapse to it: flash, blackout and glitch frames have centroid
        # cosines of 0.9+ after standardisation); the encoder's LayerNorms divide magnitude out,
        # so a nonlinearity before them turns "how far" into "which way".
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(d_model, d_model)) if mlp else None
        # Content too old or too recent to matter can be shut off whatever it shows: gates per
        # whole second of age (interpolated), 2 * sigmoid(AGE_GATE_SPEED * logit), open (1.0) at
        # logit 0. Adam moves a parameter by at most about lr per step, and by much less when its
        # gradient is noisy (a gate's is: one row's share of one token's loss); at speed 1 the
        # gates of a 1,500-step run at 2e-3 stayed at 0.8-1.0 at every age; at speed 10 the
        # on-screen ones at the ages no reaction comes from (9-20 s) fell to 0.65 on average, a
        # fifth of their channels below 0.3 (docs/moment.md).
        self.age_gate = nn.Parameter(torch.zeros(int(math.ceil(max_time_s)) + 2, d_model)) if age_gate else None

    @torch.no_grad()
    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        # Near-constant channels (dead ReLUs, often most of them) would otherwise be amplified
        # into noise: none gets more than 10x the gain of a typical live channel.
        live = std[std > 0]
        floor = 0.1 * (live.median() if len(live) else torch.tensor(1.0))
        self.mean.copy_(mean)
        self.inv_std.copy_(1.0 / std.clamp_min(floor))

    def forward(self, x: Tensor, mask: Tensor, t: Tensor | None = None) -> Tensor:
        """x [B, T, in_dim] rows in time order (oldest first, padding after), mask [B, T],
        t [B, T] ages in seconds (needed by the age gate)."""
        x = torch.where(mask[..., None], x, 0)  # padding content (even NaN) never enters the model
        x = ((x.float() - self.mean) * self.inv_std).clamp(-10, 10)  # an outlier frame cannot blow up
        x = x.to(self.proj.weight.dtype)
        h = self.proj(x)
        if self.diff_proj is not None:
            both = mask[:, 1:] & mask[:, :-1]  # the first row (and padding) has no previous row
            d = torch.where(both[..., None], x[:, 1:] - x[:, :-1], 0)
            h = h + self.diff_proj(F.pad(d, (0, 0, 1, 0)))
        if self.mlp is not None:
            h = h + self.mlp(h)
        if self.age_gate is not None:
            a = t.float().clamp(0, self.age_gate.shape[0] - 1.001)
            lo = a.floor().long()
            f = (a - lo)[..., None]
            g = self.age_gate[lo] * (1 - f) + self.age_gate[lo + 1] * f
            h = h * (2 * torch.sigmoid(AGE_GATE_SPEED * g)).to(h.dtype)
        return h + self.type_emb


class VodChatModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.d_model
        # Disabled modalities get no parameters at all: DDP rejects parameters without gradients.
        self.video_in = ModalityInput(cfg.video_dim, d, cfg.row_diff, cfg.age_gate, cfg.max_time_s,
                                      cfg.input_mlp) if cfg.use_video else None
        self.audio_in = ModalityInput(cfg.audio_dim, d, cfg.row_diff, cfg.age_gate, cfg.max_time_s,
                                      cfg.input_mlp) if cfg.use_audio else None
        if cfg.enc_alibi:  # geometric slopes as in ALiBi (Press et al., 2022), in 1/s, learned from there
            self.alibi_log_slope = nn.Parameter(torch.linspace(0.0, -4.0, cfg.n_heads).mul(math.log(2)))
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
        # Built after the others are initialised: with the same seed, every other parameter starts
        # exactly as it would without the aux loss, so the two runs differ only by it.
        if cfg.contrastive_dim:
            self.contrastive = ContrastiveHeads(d, cfg.contrastive_dim)

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
        """AdamW with weight decay on matrices (projections, embeddings) only; biases, norms,
        the 1-d modality/null embeddings, ALiBi slopes and age gates are not decayed."""
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        # Age gates are a 2-d table but no projection: decay would pull every gate half shut.
        decay = lambda n, p: p.dim() >= 2 and not n.endswith("age_gate")  # noqa: E731
        groups = [{"params": [p for n, p in params if decay(n, p)], "weight_decay": weight_decay},
                  {"params": [p for n, p in params if not decay(n, p)], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas)

    def encode(self, video: Tensor, video_time: Tensor, video_mask: Tensor,
               audio: Tensor, audio_time: Tensor, audio_mask: Tensor) -> tuple[Tensor, Tensor]:
        """video [B, Tv, video_dim], audio [B, Ta, audio_dim], *_time [B, T] seconds before the
        message (>= 0), *_mask [B, T] True = valid -> memory [B, S, D], memory_mask [B, S] with
        S = 1 + Tv + Ta (the null slot first; a disabled modality contributes no rows)."""
        B = video.shape[0]
        parts = [self.null_memory.expand(B, 1, -1)]
        masks = [torch.ones(B, 1, dtype=torch.bool, device=video.device)]
        ages = [torch.zeros(B, 1, device=video.device)]
        for inp, x, t, m in ((self.video_in, video, video_time, video_mask),
                             (self.audio_in, audio, audio_time, audio_mask)):
            if inp is not None:
                t = torch.where(m, t, 0)
                parts.append(inp(x, m, t) + self.time_emb(t))
                masks.append(m)
                ages.append(t.float())
        mask = torch.cat(masks, dim=1)
        x = self.enc_drop(torch.cat(parts, dim=1))
        key_mask = mask[:, None, None, :]  # [B, 1 (heads), 1 (queries), S]
        if self.config.enc_alibi:
            age = torch.cat(ages, dim=1)
            dist = (age[:, None, :, None] - age[:, None, None, :]).abs()  # [B, 1, S, S]
            bias = -self.alibi_log_slope.exp()[None, :, None, None] * dist  # [B, H, S, S]
            key_mask = bias.masked_fill(~key_mask, float("-inf")).to(x.dtype)
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
                audio: Tensor, audio_time: Tensor, audio_mask: Tensor,
                message_mask: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor, Tensor, Tensor]:
        """Teacher-forced logits [B, L, V]: position i predicts token i + 1. With message_mask
        [B, L] (True at the message's tokens) and model.contrastive_dim: (logits, A/V embeddings,
        message embeddings, logit scale) for the contrastive loss, from the same forward pass (a
        DDP-wrapped model syncs only what its forward computed)."""
        memory, memory_mask = self.encode(video, video_time, video_mask, audio, audio_time, audio_mask)
        logits = self.decode(tokens, memory, memory_mask)[0]
        if message_mask is None or not self.config.contrastive_dim:
            return logits
        return (logits, *self.contrastive(memory, memory_mask, self.tok_emb(tokens), message_mask))


class ContrastiveHeads(nn.Module):
    """The two sides of the contrastive aux loss (ModelConfig.contrastive_dim), CLIP style: the
    window's encoder output (what the decoder cross-attends to) mean-pooled over its valid slots,
    and the message's own token embeddings mean-pooled, each Linear projected and L2-normalised;
    a learned temperature.

    The message side is a bag of its token embeddings and nothing else: no decoder layer, whose
    cross-attention would let it read the window (matching a window with itself is trivial and
    teaches the encoder nothing), and no chat context. A reaction is mostly which words it uses,
    not their order, and the embeddings are the decoder's own (tied with its output head), so
    aligning them also shapes what the decoder predicts from the window.
    """

    def __init__(self, d_model: int, dim: int):
        super().__init__()
        # The window's side is the masked mean of its slots. A learned-query attention pool (one
        # query, starting as the mean) was tried on tests/store_factory.py's store (12 VODs, 300
        # steps of launch/debug.toml, dim 32, weight 1): validation InfoNCE of matched vs A/V-shuffled
        # pairs 1.95 vs 2.96, the mean's 1.81 vs 3.07; no gain there, so the simpler one.
        self.av_proj = nn.Linear(d_model, dim)
        self.text_proj = nn.Linear(d_model, dim)
        # CLIP's start (1 / 0.07) and clamp (100): a larger scale lets a few batches make the loss
        # spiky; a 0-d parameter, so AdamW does not decay it (configure_optimizer).
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        for proj in (self.av_proj, self.text_proj):  # as VodChatModel._init_weights would
            nn.init.normal_(proj.weight, std=0.02)
            nn.init.zeros_(proj.bias)

    def forward(self, memory: Tensor, memory_mask: Tensor, tok_emb: Tensor,
                message_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """memory [B, S, D] with memory_mask [B, S] (the null slot is always valid), token
        embeddings [B, L, D] with message_mask [B, L] -> A/V [B, dim], message [B, dim] (unit
        norm, float32; a message without tokens pools to zeros: the loss masks it out), scale."""
        av = masked_mean(memory, memory_mask)
        text = masked_mean(tok_emb, message_mask)
        return (F.normalize(self.av_proj(av).float(), dim=-1), F.normalize(self.text_proj(text).float(), dim=-1),
                self.log_scale.clamp(max=math.log(100.0)).exp().float())


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """x [B, T, D] averaged over the positions where mask [B, T] is True (zeros where none is)."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


def causal_mask(n_new: int, n_past: int, device: torch.device) -> tuple[Tensor | None, bool]:
    """(attn_mask, is_causal) for n_new tokens after n_past cached ones: new token i may attend to
    every cached token and to new tokens up to itself. SDPA's is_causal aligns the diagonal to
    the top-left corner, so it is only right without a cache."""
    if n_past == 0:
        return None, n_new > 1
    if n_new == 1:
        return None, False  # the newest token sees everything
    return torch.ones(n_new, n_past + n_new, dtype=torch.bool, device=device).tril(n_past), False
