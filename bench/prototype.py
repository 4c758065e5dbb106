"""The research prototype vod2chat replaced, reimplemented faithfully so the benchmarks can
run it side by side with vod2chat on the same machine, data and weights. Not used by vod2chat.

What the prototype did, and what this file reproduces (its choices, not ours):

- Ingest: the VOD is cut into 10-second chunks; EVERY frame of a chunk is decoded at the
  source frame rate and pushed through ResNet-50 one frame at a time (batch size 1); the
  chunk's frames are averaged into one 2048-d vector. No audio. Then, for every chat line,
  one `.pt` file holds that line and a copy of its chunk's vector: features are duplicated
  once per message, and a message sees the average of its whole chunk, future frames included.
- Text: a word-level vocabulary (lower-cased whitespace words, every word seen in training),
  so each new emote or username is a new row of the embedding and of the output layer.
- Model: the A/V memory is ONE vector per example (an average over all rows), projected to
  d_model and fed to torch's nn.Transformer encoder-decoder; the decoder is trained WITHOUT a
  causal mask, so every position attends to the whole message, including the token it is
  asked to predict.

    vocab = WordVocab.build(texts)
    model = PrototypeModel(PrototypeConfig(vocab_size=len(vocab), d_model=256, ...))
    loss = prototype_loss(model, prototype_batch(vod2chat_batch, vocab, max_len=34))
    prototype_ingest(video_path, messages, out_dir, resnet)      # one .pt per chat line
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

CHUNK_S = 10.0  # the prototype's chunk length


# -- text: a word-level vocabulary --------------------------------------------------------
class WordVocab:
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3
    SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")

    def __init__(self, words: Sequence[str]):
        self.itos = list(self.SPECIALS) + list(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> "WordVocab":
        """Every word seen at least min_count times, most frequent first."""
        counts = Counter(w for t in texts for w in t.lower().split())
        return cls([w for w, c in counts.most_common() if c >= min_count])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(w, self.unk_id) for w in text.lower().split()]


# -- the model ----------------------------------------------------------------------------
@dataclass
class PrototypeConfig:
    vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    n_enc_layers: int = 2
    n_dec_layers: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    max_len: int = 64
    video_dim: int = 2048
    audio_dim: int = 128
    use_audio: bool = False  # the prototype had no audio; True pools audio into the same vector


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """[B, T, D], [B, T] -> [B, D]: the average of the valid rows (zeros if none)."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


class PrototypeModel(nn.Module):
    def __init__(self, cfg: PrototypeConfig):
        super().__init__()
        self.config = cfg
        in_dim = cfg.video_dim + (cfg.audio_dim if cfg.use_audio else 0)
        self.av_proj = nn.Linear(in_dim, cfg.d_model)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=WordVocab.pad_id)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.transformer = nn.Transformer(cfg.d_model, cfg.n_heads, cfg.n_enc_layers, cfg.n_dec_layers,
                                          cfg.d_ff, cfg.dropout, batch_first=True)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: Tensor, video: Tensor, video_mask: Tensor,
                audio: Tensor | None = None, audio_mask: Tensor | None = None) -> Tensor:
        pooled = masked_mean(video, video_mask)  # the whole window becomes one vector
        if self.config.use_audio:
            pooled = torch.cat([pooled, masked_mean(audio, audio_mask)], dim=-1)
        src = self.av_proj(pooled)[:, None]  # [B, 1, D]: a memory of length one
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        tgt = self.tok_emb(tokens) + self.pos_emb(pos)
        # No tgt_mask: the prototype's decoder sees the whole message at every position.
        out = self.transformer(src, tgt, tgt_key_padding_mask=tokens == WordVocab.pad_id)
        return self.head(out)


def prototype_batch(batch: dict[str, Any], vocab: WordVocab, max_len: int) -> dict[str, Tensor]:
    """A vod2chat batch -> the prototype's inputs for the same examples: the same A/V rows and
    the same message, as word ids <bos> words <eos> (the prototype had no chat context)."""
    seqs = [[vocab.bos_id] + vocab.encode(t)[: max_len - 2] + [vocab.eos_id] for t in batch["texts"]]
    tokens = torch.full((len(seqs), max(map(len, seqs))), vocab.pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s)
    dev = batch["video"].device
    return {"tokens": tokens.to(dev), "video": batch["video"], "video_mask": batch["video_mask"],
            "audio": batch["audio"], "audio_mask": batch["audio_mask"]}


def prototype_loss(model: nn.Module, b: dict[str, Tensor]) -> tuple[Tensor, int]:
    """Mean cross-entropy of next-word prediction, and the number of predicted tokens."""
    logits = model(b["tokens"][:, :-1], b["video"], b["video_mask"], b["audio"], b["audio_mask"])
    targets = b["tokens"][:, 1:]
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=WordVocab.pad_id)
    return loss, int((targets != WordVocab.pad_id).sum())


# -- ingest: every frame, one at a time, one .pt per chat line ----------------------------
def resnet50_trunk(state_dict_path: str | None = None, seed: int = 0) -> nn.Module:
    """torchvision ResNet-50 with the classifier removed (pooled 2048-d output), in eval mode."""
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.resnet50(weights=None)
    if state_dict_path:
        net.load_state_dict(torch.load(state_dict_path, map_location="cpu", weights_only=True))
    net.fc = nn.Identity()
    return net.eval()


def imagenet_transform():
    """The torchvision ImageNet recipe the prototype applied to each PIL frame."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                      T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])


@dataclass
class PrototypeIngestStats:
    frames: int = 0
    chunks: int = 0
    files: int = 0
    bytes: int = 0
    decode_s: float = 0.0  # demux + decode + PIL conversion + transform
    embed_s: float = 0.0  # ResNet-50 forward passes
    write_s: float = 0.0  # torch.save of the per-message files


@torch.inference_mode()
def chunk_features(video_path: str | Path, net: nn.Module, stats: PrototypeIngestStats,
                   chunk_s: float = CHUNK_S) -> dict[int, Tensor]:
    """chunk index -> the mean ResNet-50 vector of every frame decoded in it (PyAV, full rate)."""
    import av

    tf = imagenet_transform()
    sums: dict[int, Tensor] = {}
    counts: Counter[int] = Counter()
    with av.open(str(video_path)) as container:
        frames = container.decode(video=0)
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                break
            x = tf(frame.to_image())[None]
            t1 = time.perf_counter()
            feat = net(x)[0]  # one frame at a time, as the prototype did
            stats.decode_s += t1 - t0
            stats.embed_s += time.perf_counter() - t1
            k = int(float(frame.time or 0.0) // chunk_s)
            sums[k] = sums[k] + feat if k in sums else feat.clone()
            counts[k] += 1
            stats.frames += 1
    stats.chunks = len(sums)
    return {k: sums[k] / counts[k] for k in sums}


def prototype_ingest(video_path: str | Path, messages: Sequence[Any], out_dir: str | Path, net: nn.Module,
                     chunk_s: float = CHUNK_S) -> PrototypeIngestStats:
    """The prototype's whole ingest of one VOD. `messages` have .t, .user, .text."""
    stats = PrototypeIngestStats()
    feats = chunk_features(video_path, net, stats, chunk_s)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, m in enumerate(messages):
        k = int(m.t // chunk_s)
        if k not in feats:  # a message outside the video: the prototype had nothing to pair it with
            continue
        path = out / f"{i:08d}.pt"
        torch.save({"video": feats[k].clone(), "t": float(m.t), "user": m.user, "text": m.text}, path)
        stats.files += 1
        stats.bytes += path.stat().st_size
    stats.write_s = time.perf_counter() - t0
    return stats
