"""The training loader as it was before the scale work (issue 10), kept only so bench/train.py
can measure the new loader against it on the same machine, data and settings. Not used by
vod2chat. Per message it recomputed the window masks over every row, re-tokenized the whole
context, copied the window's rows and converted them to float32; collate then copied every
example into the batch with per-example tensor assignments; shards were parsed with
webdataset's tarfile-based expander and arrays with np.load.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch

from vod2chat.shards.reader import ShardStream, shuffle
from vod2chat.shards.schema import Sample
from vod2chat.trainer.config import DataConfig
from vod2chat.trainer.data import Example, av_window
from vod2chat.trainer.tokenizer import ChatTokenizer


def old_context_tokens(texts: list[str], tok: ChatTokenizer, max_tokens: int) -> list[int]:
    out: list[int] = []
    for text in reversed(texts):
        ids = tok.encode(text) + [tok.eos_id]
        if len(out) + len(ids) > max_tokens:
            break
        out = ids + out
    return out


def old_sample_examples(sample: Sample, tok: ChatTokenizer, cfg: DataConfig) -> Iterator[Example]:
    history = [m["text"] for m in sample.chat["context"]]
    for i, m in enumerate(sample.chat["messages"]):
        t = float(m["t"])
        video, video_time, audio, audio_time = av_window(sample, t, cfg.window_s)
        ctx = history[-cfg.context_messages:] if cfg.context_messages else []
        prefix = [tok.bos_id] + old_context_tokens(ctx, tok, cfg.max_context_tokens) + [tok.sep_id]
        tokens = prefix + tok.encode(m["text"])[: cfg.max_message_tokens] + [tok.eos_id]
        yield Example(f"{sample.key}/{i}", t, video, video_time, audio, audio_time, tokens, len(prefix), m["text"], ctx)
        history.append(m["text"])


def old_collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
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
        loss_mask[b, e.n_prefix - 1: n - 1] = True
        nv, na = len(e.video), len(e.audio)
        video[b, :nv], video_time[b, :nv], video_mask[b, :nv] = torch.from_numpy(e.video.astype(np.float32)), torch.from_numpy(e.video_time), True
        audio[b, :na], audio_time[b, :na], audio_mask[b, :na] = torch.from_numpy(e.audio.astype(np.float32)), torch.from_numpy(e.audio_time), True
    return {"tokens": tokens, "loss_mask": loss_mask, "video": video, "video_time": video_time,
            "video_mask": video_mask, "audio": audio, "audio_time": audio_time, "audio_mask": audio_mask,
            "n_prefix": torch.tensor([e.n_prefix for e in examples]), "keys": [e.key for e in examples],
            "texts": [e.text for e in examples]}


def old_batches(urls: list[str], tok: ChatTokenizer, cfg: DataConfig, micro_batch: int, seed: int) -> Iterator[dict[str, Any]]:
    """The old training stream of one process without DataLoader workers: resampled shards,
    examples, the shuffle buffer, collate."""
    samples = ShardStream(urls, seed=seed, resample=True, shuffle_shards=True)
    examples = (e for s in samples for e in old_sample_examples(s, tok, cfg))
    if cfg.shuffle_buffer > 1:
        examples = shuffle(examples, cfg.shuffle_buffer, random.Random(f"{seed}:0:0"))
    batch = []
    for e in examples:
        batch.append(e)
        if len(batch) == micro_batch:
            yield old_collate(batch, tok.pad_id)
            batch = []
