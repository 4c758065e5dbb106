"""The research prototype vod2chat replaced, reimplemented faithfully so the benchmarks can
run it side by side with vod2chat on the same machine, data and weights. Not used by vod2chat.

What the prototype did, and what this file reproduces (its choices, not ours):

- Ingest (its README: `fps_for_sampling=1.0`): the VOD is cut into 10-second chunks; every
  frame is decoded in order (a sequential reader must), and frames sampled at 1 fps go through
  torchvision's Resize(256)/CenterCrop(224) and ResNet-50, a chunk's frames as one batch,
  averaged into one 2048-d vector; the chunk's 16 kHz mono audio goes through torchvggish's
  log-mel examples and VGGish, averaged into one 128-d vector. Then, for every chat line, one
  `.pt` file (torch.save) holds that line and a copy of its chunk's vectors: features are
  duplicated once per message, and a message sees the average of its whole chunk, future
  frames included.
- Text: a word-level vocabulary (lower-cased whitespace words, every word seen in training),
  so each new emote or username is a new row of the embedding and of the output layer.
- Model: the A/V memory is ONE vector per example (an average over all rows), projected to
  d_model and fed to torch's nn.Transformer encoder-decoder; the decoder is trained WITHOUT a
  causal mask, so every position attends to the whole message, including the token it is
  asked to predict.

    vocab = WordVocab.build(texts)
    model = PrototypeModel(PrototypeConfig(vocab_size=len(vocab), d_model=256, ...))
    loss = prototype_loss(model, prototype_batch(vod2chat_batch, vocab, max_len=34))
    prototype_ingest(video_path, messages, out_dir, resnet, vggish)   # one .pt per chat line
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


# -- ingest: 10 s chunks, 1 fps frames + VGGish audio, one .pt per chat line ---------------
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
    """The torchvision ImageNet recipe the prototype applied to each sampled PIL frame."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                      T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])


@dataclass
class PrototypeIngestStats:
    seconds: float = 0.0  # VOD seconds ingested
    frames_decoded: int = 0
    frames: int = 0  # frames through ResNet-50
    audio_examples: int = 0  # 0.96 s log-mel examples through VGGish
    chunks: int = 0
    files: int = 0
    bytes: int = 0
    decode_s: float = 0.0  # demux + decode of every frame (a sequential reader must)
    resize_s: float = 0.0  # to PIL + Resize(256) + CenterCrop(224) + normalise, sampled frames only
    embed_s: float = 0.0  # ResNet-50, one batch per chunk
    audio_decode_s: float = 0.0  # the audio track to 16 kHz mono
    vggish_s: float = 0.0  # torchvggish log-mel examples + VGGish, per chunk
    write_s: float = 0.0  # torch.save of the per-message files

    def stages(self) -> dict[str, float]:
        return {"decode video": self.decode_s, "resize": self.resize_s, "ResNet-50": self.embed_s,
                "decode audio": self.audio_decode_s, "VGGish": self.vggish_s, "write": self.write_s}


def _audio_16k(video_path: str | Path, seconds: float) -> Any:
    """The whole audio track as 16 kHz mono float32 (what `ffmpeg -ac 1 -ar 16000` gave the prototype)."""
    import av
    import numpy as np

    parts = []
    with av.open(str(video_path)) as c:
        if not c.streams.audio:
            return np.zeros(int(seconds * 16000), np.float32)
        rs = av.AudioResampler(format="flt", layout="mono", rate=16000)
        for frame in c.decode(audio=0):
            if frame.time is not None and frame.time > seconds:
                break
            parts += [o.to_ndarray().reshape(-1) for o in rs.resample(frame)]
        parts += [o.to_ndarray().reshape(-1) for o in rs.resample(None)]
    return np.concatenate(parts)[: int(seconds * 16000)] if parts else np.zeros(0, np.float32)


@torch.inference_mode()
def chunk_features(video_path: str | Path, net: nn.Module, vggish: nn.Module | None, stats: PrototypeIngestStats,
                   chunk_s: float = CHUNK_S, fps: float = 1.0, max_seconds: float | None = None
                   ) -> dict[int, dict[str, Tensor]]:
    """chunk index -> {"video": mean ResNet-50 vector of the chunk's frames sampled at `fps`,
    "audio": mean VGGish vector of the chunk's 16 kHz audio}. PyAV decodes every frame in order
    and keeps every (source fps / fps)-th, as the prototype's frame loop did."""
    import av
    from torchvggish import vggish_input

    tf = imagenet_transform()
    out: dict[int, dict[str, Tensor]] = {}
    batch: list[Tensor] = []
    chunk = 0

    def flush(k: int) -> None:
        if batch:
            t0 = time.perf_counter()
            x = torch.stack(batch).to(next(net.parameters()).device)
            out.setdefault(k, {})["video"] = net(x).mean(0).cpu()  # the chunk as one batch
            stats.embed_s += time.perf_counter() - t0
            stats.frames += len(batch)
            batch.clear()

    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        src_fps = float(stream.average_rate or stream.guessed_rate or 30)
        every = max(1, round(src_fps / fps))
        duration = float(container.duration or 0) / av.time_base
        end = min(duration, max_seconds) if max_seconds else duration
        frames = container.decode(stream)
        i = 0
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            stats.decode_s += time.perf_counter() - t0
            if frame is None or (frame.time or 0.0) >= end:
                break
            stats.frames_decoded += 1
            k = int((frame.time or 0.0) // chunk_s)
            if k != chunk:
                flush(chunk)
                chunk = k
            if i % every == 0:
                t0 = time.perf_counter()
                batch.append(tf(frame.to_image()))
                stats.resize_s += time.perf_counter() - t0
            i += 1
        flush(chunk)
    stats.seconds = end
    if vggish is not None:
        t0 = time.perf_counter()
        wave = _audio_16k(video_path, end)
        stats.audio_decode_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        n = int(chunk_s * 16000)
        for k in range(0, (len(wave) + n - 1) // n):
            ex = vggish_input.waveform_to_examples(wave[k * n : (k + 1) * n], 16000)
            if len(ex):
                dev = next(vggish.parameters()).device
                out.setdefault(k, {})["audio"] = vggish(ex.detach().to(dev)).mean(0).cpu()
                stats.audio_examples += len(ex)
        stats.vggish_s += time.perf_counter() - t0
    stats.chunks = len(out)
    return out


def prototype_ingest(video_path: str | Path, messages: Sequence[Any], out_dir: str | Path, net: nn.Module,
                     vggish: nn.Module | None = None, chunk_s: float = CHUNK_S,
                     max_seconds: float | None = None) -> PrototypeIngestStats:
    """The prototype's whole ingest of one VOD (or its first `max_seconds`). `messages` have
    .t, .user, .text; each gets a file with a copy of its chunk's vectors."""
    stats = PrototypeIngestStats()
    feats = chunk_features(video_path, net, vggish, stats, chunk_s, max_seconds=max_seconds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, m in enumerate(messages):
        k = int(m.t // chunk_s)
        if k not in feats or m.t >= stats.seconds:  # outside the video: nothing to pair it with
            continue
        path = out / f"{i:08d}.pt"
        torch.save({**{name: v.clone() for name, v in feats[k].items()}, "t": float(m.t), "user": m.user,
                    "text": m.text}, path)
        stats.files += 1
        stats.bytes += path.stat().st_size
    stats.write_s = time.perf_counter() - t0
    return stats
