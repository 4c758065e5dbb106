"""Store samples -> training examples -> padded batches.

One example per chat message m at time t of a segment: the video rows shown in (t - window, t],
the audio windows fully heard by t and ending after t - window, the previous messages as text,
and m as the target. Nothing after t ever enters an example: a live model cannot see the future.

Token layout:  <bos> ctx_1 <eos> ctx_2 <eos> ... <sep> message <eos>   (loss on message and <eos>)
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from vod2chat.shards.reader import Selection, ShardStream, select_records, shard_urls, shard_weights, shuffle
from vod2chat.shards.schema import Sample
from vod2chat.shards.store import Store
from vod2chat.trainer.config import DataConfig
from vod2chat.trainer.tokenizer import ChatTokenizer


@dataclass
class Example:
    key: str  # sample key + message index: identifies the example across ranks
    t: float
    video: np.ndarray  # float16 [Tv, 2048]
    video_time: np.ndarray  # float32 [Tv], seconds before t (>= 0)
    audio: np.ndarray  # float16 [Ta, 128]
    audio_time: np.ndarray  # float32 [Ta], seconds between the window's end and t (>= 0)
    tokens: list[int]
    n_prefix: int  # tokens before the message: <bos> context <sep>
    text: str
    context: list[str]


def av_window(sample: Sample, t: float, window_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Feature rows visible at time t, with their age in seconds. Rows after t are excluded."""
    eps = 1e-6
    vt = sample.video_times()
    v = (vt <= t + eps) & (vt > t - window_s)
    at = sample.audio_end_times()
    a = (at <= t + eps) & (at > t - window_s)
    return sample.video[v], (t - vt[v]).astype(np.float32), sample.audio[a], (t - at[a]).clip(0).astype(np.float32)


def context_tokens(texts: list[str], tok: ChatTokenizer, max_tokens: int) -> list[int]:
    """The most recent context messages that fit, oldest first, each closed by <eos>."""
    out: list[int] = []
    for text in reversed(texts):
        ids = tok.encode(text) + [tok.eos_id]
        if len(out) + len(ids) > max_tokens:
            break
        out = ids + out
    return out


def build_tokens(context: list[str], message: str | None, tok: ChatTokenizer, cfg: DataConfig) -> tuple[list[int], int]:
    prefix = [tok.bos_id] + context_tokens(context, tok, cfg.max_context_tokens) + [tok.sep_id]
    if message is None:  # generation: the model writes the rest
        return prefix, len(prefix)
    return prefix + tok.encode(message)[: cfg.max_message_tokens] + [tok.eos_id], len(prefix)


def sample_examples(sample: Sample, tok: ChatTokenizer, cfg: DataConfig) -> Iterator[Example]:
    history = [m["text"] for m in sample.chat["context"]]
    for i, m in enumerate(sample.chat["messages"]):
        t = float(m["t"])
        video, video_time, audio, audio_time = av_window(sample, t, cfg.window_s)
        ctx = history[-cfg.context_messages :] if cfg.context_messages else []
        tokens, n_prefix = build_tokens(ctx, m["text"], tok, cfg)
        yield Example(f"{sample.key}/{i}", t, video, video_time, audio, audio_time, tokens, n_prefix, m["text"], ctx)
        history.append(m["text"])


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Pad to the longest in the batch. Masks are True where real data is."""
    B = len(examples)
    L = max(len(e.tokens) for e in examples)
    Tv = max(1, max(len(e.video) for e in examples))
    Ta = max(1, max(len(e.audio) for e in examples))
    tokens = torch.full((B, L), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(B, L, dtype=torch.bool)
    video = torch.zeros(B, Tv, examples[0].video.shape[1])
    audio = torch.zeros(B, Ta, examples[0].audio.shape[1])
    video_time, audio_time = torch.zeros(B, Tv), torch.zeros(B, Ta)
    video_mask, audio_mask = torch.zeros(B, Tv, dtype=torch.bool), torch.zeros(B, Ta, dtype=torch.bool)
    for b, e in enumerate(examples):
        n = len(e.tokens)
        tokens[b, :n] = torch.tensor(e.tokens)
        # Position i predicts token i+1: the loss covers predictions of the message and its <eos>.
        loss_mask[b, e.n_prefix - 1 : n - 1] = True
        nv, na = len(e.video), len(e.audio)
        video[b, :nv], video_time[b, :nv], video_mask[b, :nv] = torch.from_numpy(e.video.astype(np.float32)), torch.from_numpy(e.video_time), True
        audio[b, :na], audio_time[b, :na], audio_mask[b, :na] = torch.from_numpy(e.audio.astype(np.float32)), torch.from_numpy(e.audio_time), True
    return {
        "tokens": tokens, "loss_mask": loss_mask,
        "video": video, "video_time": video_time, "video_mask": video_mask,
        "audio": audio, "audio_time": audio_time, "audio_mask": audio_mask,
        "n_prefix": torch.tensor([e.n_prefix for e in examples]),
        "keys": [e.key for e in examples], "texts": [e.text for e in examples],
    }


class ExampleStream(torch.utils.data.IterableDataset):
    """Samples from the shard stream, cut into examples, shuffled with a seeded buffer."""

    def __init__(self, samples: ShardStream, tok: ChatTokenizer, cfg: DataConfig, buffer: int, seed: int):
        super().__init__()
        self.samples, self.tok, self.cfg, self.buffer, self.seed = samples, tok, cfg, buffer, seed

    def __iter__(self) -> Iterator[Example]:
        info = torch.utils.data.get_worker_info()
        rng = random.Random(f"{self.seed}:{self.samples.rank}:{info.id if info else 0}")
        examples: Iterable[Example] = (e for s in self.samples for e in sample_examples(s, self.tok, self.cfg))
        if self.buffer > 1:
            examples = shuffle(examples, self.buffer, rng)
        yield from examples


def selection(cfg: DataConfig, split: str) -> Selection:
    return Selection(streamers=cfg.streamers, vods=cfg.vods, split=split, val_vods=cfg.val_vods,
                     test_vods=cfg.test_vods, val_fraction=cfg.val_fraction,
                     test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)


def check_cut(records: list[dict[str, Any]], cfg: DataConfig) -> None:
    """Segment length and look-back are per-VOD ingest settings (a store may mix them), so each
    selected VOD must carry what the examples need: a look-back of at least data.window_s (or a
    message early in a segment sees a truncated window) and at least data.context_messages of
    chat context. Records without these fields (not written by `vod2chat ingest`) are trusted."""
    short = [(f"{r['streamer']}/{r['vod_id']}", r["lookback_s"]) for r in records
             if r.get("lookback_s") is not None and r["lookback_s"] + 1e-9 < cfg.window_s]
    if short:
        have = min(lb for _, lb in short)
        raise ValueError(
            f"data.window_s={cfg.window_s:g} needs {cfg.window_s:g} s of features before each segment, but "
            f"{len(short)} selected VOD(s) were ingested with less look-back: "
            + ", ".join(f"{v} ({lb:g} s)" for v, lb in short[:5]) + ("..." if len(short) > 5 else "")
            + f". Set data.window_s<={have:g}, or re-ingest them with --set lookback_s={cfg.window_s:g} --replace")
    few = [(f"{r['streamer']}/{r['vod_id']}", r["context_messages"]) for r in records
           if r.get("context_messages") is not None and r["context_messages"] < cfg.context_messages]
    if few:
        raise ValueError(
            f"data.context_messages={cfg.context_messages} but {len(few)} selected VOD(s) were ingested with fewer: "
            + ", ".join(f"{v} ({n})" for v, n in few[:5]) + ("..." if len(few) > 5 else "")
            + f". Set data.context_messages<={min(n for _, n in few)}, or re-ingest them with "
            f"--set context_messages={cfg.context_messages} --replace")


def split_shards(cfg: DataConfig, split: str) -> tuple[list[str], list[float] | None]:
    store = Store(cfg.store)
    records = select_records(store, selection(cfg, split))
    check_cut(records, cfg)
    urls = shard_urls(store, records)
    if not urls:
        raise ValueError(f"store {cfg.store} has no VOD in split {split!r} for streamers={cfg.streamers or 'all'}"
                         f" vods={cfg.vods or 'all'}: ingest more VODs or change data.val_fraction/test_fraction")
    return urls, shard_weights(records, cfg.streamer_weights)


def make_loader(cfg: DataConfig, tok: ChatTokenizer, split: str, micro_batch: int, rank: int, world_size: int,
                seed: int, train: bool) -> torch.utils.data.DataLoader:
    """Training: an endless resampled stream per rank (ranks never wait on each other).
    Evaluation: one pass, each example on exactly one rank. The split happens here, once:
    do not pass this loader through accelerator.prepare, which would split it again."""
    urls, weights = split_shards(cfg, split)
    samples = ShardStream(urls, rank=rank, world_size=world_size, seed=seed, resample=train, shuffle_shards=train,
                          buffer=0, skip_errors=cfg.skip_errors, weights=weights if train else None)
    # Evaluation shuffles too (the same seeded order every time): a batch then mixes moments, so
    # the first eval_batches are not one segment and the A/V-shuffled ablation swaps real content.
    ds = ExampleStream(samples, tok, cfg, buffer=cfg.shuffle_buffer, seed=seed)
    return torch.utils.data.DataLoader(ds, batch_size=micro_batch, num_workers=cfg.num_workers,
                                       collate_fn=lambda b: collate(b, tok.pad_id),
                                       # Its own generator: iter(loader) must not draw from the global
                                       # RNG, or a resumed run's dropout would drift from the original.
                                       generator=torch.Generator().manual_seed(seed))


def iter_texts(cfg: DataConfig, split: str = "train") -> Iterator[str]:
    """Chat texts of a split, for training the tokenizer (context-only messages are skipped:
    they are also some other segment's messages)."""
    for s in ShardStream(split_shards(cfg, split)[0], shuffle_shards=False, skip_errors=cfg.skip_errors):
        for m in s.chat["messages"]:
            yield m["text"]


def feature_stats(cfg: DataConfig, max_shards: int = 64, per_shard: int = 8) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and std of the video and audio rows of the train split, from the first
    samples of up to max_shards shards spread evenly over it (a cheap, deterministic estimate
    that does not come from one VOD only)."""
    urls = split_shards(cfg, "train")[0]
    picked = [urls[round(i * (len(urls) - 1) / max(1, min(max_shards, len(urls)) - 1))]
              for i in range(min(max_shards, len(urls)))]
    acc: dict[str, list] = {}
    for url in dict.fromkeys(picked):
        for s in itertools.islice(ShardStream([url], shuffle_shards=False, skip_errors=cfg.skip_errors), per_shard):
            for name, rows in (("video", s.video), ("audio", s.audio)):
                x = torch.from_numpy(rows.astype(np.float64))
                n, s1, s2 = acc.setdefault(name, [0, 0.0, 0.0])
                acc[name] = [n + len(x), s1 + x.sum(0), s2 + (x * x).sum(0)]
    out = {}
    for name, (n, s1, s2) in acc.items():
        if n:
            mean = s1 / n
            out[name] = (mean.float(), (s2 / n - mean * mean).clamp_min(0).sqrt().float())
    return out
