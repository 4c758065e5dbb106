"""Store samples -> training examples -> padded batches.

One example per chat message m at time t of a segment: the video rows shown in (t - window, t],
the audio windows fully heard by t and ending after t - window, the previous messages as text,
and m as the target. Nothing after t ever enters an example: a live model cannot see the future.

Token layout:  <bos> ctx_1 <eos> ctx_2 <eos> ... <sep> message <eos>   (loss on message and <eos>)
with data.streamer_token: <bos> <streamer:NAME> ctx_1 <eos> ... (the same otherwise)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import itertools
import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from vod2chat.shards.reader import Selection, ShardStream, select_from, shard_checks, shard_urls, shuffle
from vod2chat.shards.schema import Sample, VodRecord
from vod2chat.shards.store import Store
from vod2chat.trainer.config import DataConfig, TokenizerConfig
from vod2chat.trainer.tokenizer import ChatTokenizer

log = logging.getLogger(__name__)


@dataclass
class Example:
    key: str  # sample key + message index: identifies the example across ranks
    t: float
    video: np.ndarray | torch.Tensor  # float16 [Tv, 2048] (an array, or a view of its segment's rows)
    video_time: np.ndarray  # float32 [Tv], seconds before t (>= 0)
    audio: np.ndarray | torch.Tensor  # [Ta, 128]
    audio_time: np.ndarray  # float32 [Ta], seconds between the window's end and t (>= 0)
    tokens: list[int]
    n_prefix: int  # tokens before the message: <bos> context <sep>
    text: str
    context: list[str]
    ref: tuple[int, int, int] = (-1, -1, -1)  # (shard, sample position, message): where to re-read it


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
    return _fit_context([tok.encode(t) for t in texts], tok.eos_id, max_tokens)


def _fit_context(ids: list[list[int]], eos: int, max_tokens: int) -> list[int]:
    out: list[int] = []
    for m in reversed(ids):
        if len(out) + len(m) + 1 > max_tokens:
            break
        out = m + [eos] + out
    return out


def streamer_prefix(streamer: str, tok: ChatTokenizer, cfg: DataConfig) -> list[int]:
    """<bos>, then the streamer's token where data.streamer_token is on and the tokenizer knows
    the streamer (one it was not trained with gets none: the model then reads the community
    from the chat context alone, as without the option)."""
    sid = tok.streamer_id(streamer) if cfg.streamer_token else None
    return [tok.bos_id] if sid is None else [tok.bos_id, sid]


def build_tokens(context: list[str], message: str | None, tok: ChatTokenizer, cfg: DataConfig,
                 streamer: str = "") -> tuple[list[int], int]:
    prefix = streamer_prefix(streamer, tok, cfg) + context_tokens(context, tok, cfg.max_context_tokens) + [tok.sep_id]
    if message is None:  # generation: the model writes the rest
        return prefix, len(prefix)
    return prefix + tok.encode(message)[: cfg.max_message_tokens] + [tok.eos_id], len(prefix)


def sample_examples(sample: Sample, tok: ChatTokenizer, cfg: DataConfig, shard: int = -1, pos: int = -1,
                    first: int = 0) -> Iterator[Example]:
    """A segment's examples (from message `first` on), the same as av_window + build_tokens per
    message but with the segment's work done once: features converted to float32 tensors once
    (examples are views of them), window bounds found for all messages in one searchsorted, and
    every text tokenized once (a message is later context for the next ones). Features stay in
    the store's float16 up to the model, which standardises them in float32 on its device."""
    msgs = sample.chat["messages"][first:] if first else sample.chat["messages"]
    if not msgs:
        return iter(())
    n_ctx = cfg.context_messages
    history = [m["text"] for m in sample.chat["context"]][-n_ctx:] if n_ctx else []
    texts = [m["text"] for m in sample.chat["messages"]]
    ids, h = [tok.encode(x) for x in history + texts], len(history)
    video, audio = sample.video, sample.audio
    vt, at = sample.video_times(), sample.audio_end_times()
    t = np.array([float(m["t"]) for m in msgs])
    # Rows in (t - window, t]: times are increasing, so the window is a contiguous range.
    v0, v1 = np.searchsorted(vt, t - cfg.window_s, "right"), np.searchsorted(vt, t + 1e-6, "right")
    a0, a1 = np.searchsorted(at, t - cfg.window_s, "right"), np.searchsorted(at, t + 1e-6, "right")
    all_texts = history + texts
    head = streamer_prefix(sample.meta.get("streamer", ""), tok, cfg)
    out = []
    for j, m in enumerate(msgs):
        i = first + j  # message index in the segment; all_texts[h + i] is its text
        ctx_ids = ids[max(0, h + i - n_ctx) : h + i] if n_ctx else []
        prefix = head + _fit_context(ctx_ids, tok.eos_id, cfg.max_context_tokens) + [tok.sep_id]
        tokens = prefix + ids[h + i][: cfg.max_message_tokens] + [tok.eos_id]
        ctx = all_texts[max(0, h + i - n_ctx) : h + i] if n_ctx else []
        ti = t[j]
        out.append(Example(key=f"{sample.key}/{i}", t=float(ti), video=video[v0[j] : v1[j]],
                           video_time=(ti - vt[v0[j] : v1[j]]).astype(np.float32), audio=audio[a0[j] : a1[j]],
                           audio_time=(ti - at[a0[j] : a1[j]]).clip(0).astype(np.float32), tokens=tokens,
                           n_prefix=len(prefix), text=m["text"], context=ctx, ref=(shard, pos, i)))
    return iter(out)


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Pad to the longest in the batch. Masks are True where real data is. Masks, times and
    tokens are filled in whole-batch operations; features with one copy per example."""
    B = len(examples)
    lens = np.fromiter((len(e.tokens) for e in examples), np.int64, B)
    nv = np.fromiter((len(e.video) for e in examples), np.int64, B)
    na = np.fromiter((len(e.audio) for e in examples), np.int64, B)
    n_prefix = np.fromiter((e.n_prefix for e in examples), np.int64, B)
    L, Tv, Ta = int(lens.max()), max(1, int(nv.max())), max(1, int(na.max()))
    pos = np.arange(L)[None]
    real = pos < lens[:, None]
    tokens = np.full((B, L), pad_id, np.int64)
    tokens[real] = np.fromiter(itertools.chain.from_iterable(e.tokens for e in examples), np.int64, int(lens.sum()))
    # Position i predicts token i+1: the loss covers predictions of the message and its <eos>.
    loss_mask = (pos >= n_prefix[:, None] - 1) & (pos < lens[:, None] - 1)
    video_mask, audio_mask = np.arange(Tv)[None] < nv[:, None], np.arange(Ta)[None] < na[:, None]
    out = {}
    for name, n, T, mask in (("video", nv, Tv, video_mask), ("audio", na, Ta, audio_mask)):
        # float16 as stored: half the bytes to copy, pin and send; the model converts on its device.
        rows = np.zeros((B, T, examples[0].__dict__[name].shape[1]), np.float16)
        times = np.zeros((B, T), np.float32)
        if n.sum():
            for b, e in enumerate(examples):  # one block copy per example (a boolean-mask store is slower)
                rows[b, : n[b]] = e.__dict__[name]
            times[mask] = np.concatenate([e.__dict__[f"{name}_time"] for e in examples])
        out[name], out[f"{name}_time"] = torch.from_numpy(rows), torch.from_numpy(times)
    return {
        "tokens": torch.from_numpy(tokens), "loss_mask": torch.from_numpy(loss_mask),
        "video": out["video"], "video_time": out["video_time"], "video_mask": torch.from_numpy(video_mask),
        "audio": out["audio"], "audio_time": out["audio_time"], "audio_mask": torch.from_numpy(audio_mask),
        "n_prefix": torch.from_numpy(n_prefix),
        "keys": [e.key for e in examples], "texts": [e.text for e in examples],
    }


class ExampleStream(torch.utils.data.IterableDataset):
    """Samples from the shard stream, cut into examples, shuffled with a seeded buffer
    (evaluation: one pass; training uses the resumable TrainStream in trainer/stream.py)."""

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


def check_cut(records: list[VodRecord], cfg: DataConfig) -> None:
    """Segment length and look-back are per-VOD ingest settings (a store may mix them), so each
    selected VOD must carry what the examples need: a look-back of at least data.window_s (or a
    message early in a segment sees a truncated window) and at least data.context_messages of
    chat context. Records without these fields (not written by `vod2chat ingest`) are trusted."""
    short = [(r.name, r.setting("lookback_s")) for r in records
             if r.setting("lookback_s") is not None and r.setting("lookback_s") + 1e-9 < cfg.window_s]
    if short:
        have = min(lb for _, lb in short)
        raise ValueError(
            f"data.window_s={cfg.window_s:g} needs {cfg.window_s:g} s of features before each segment, but "
            f"{len(short)} selected VOD(s) were ingested with less look-back: "
            + ", ".join(f"{v} ({lb:g} s)" for v, lb in short[:5]) + ("..." if len(short) > 5 else "")
            + f". Set data.window_s<={have:g}, or re-ingest them with --set lookback_s={cfg.window_s:g} --replace")
    few = [(r.name, r.setting("context_messages")) for r in records
           if r.setting("context_messages") is not None and r.setting("context_messages") < cfg.context_messages]
    if few:
        raise ValueError(
            f"data.context_messages={cfg.context_messages} but {len(few)} selected VOD(s) were ingested with fewer: "
            + ", ".join(f"{v} ({n})" for v, n in few[:5]) + ("..." if len(few) > 5 else "")
            + f". Set data.context_messages<={min(n for _, n in few)}, or re-ingest them with "
            f"--set context_messages={cfg.context_messages} --replace")


class RunSplits:
    """One listing of a run's store and the VODs of each split of its selection (data.*). A training
    run, an evaluation or a generation lists the store once and passes this view down, so every
    split, statistic, tokenizer text and loader of it comes from the same records."""

    def __init__(self, cfg: DataConfig, store: Store | None = None):
        self.cfg, self.store = cfg, store or Store(cfg.store)
        self.records = list(self.store.records())

    def narrowed(self, streamers: list[str]) -> RunSplits:
        """The same listing with the selection cut to `streamers` (train.init_from reads the new
        streamers' chat alone): the store is not listed again."""
        view = copy.copy(self)
        view.cfg = dataclasses.replace(self.cfg, streamers=list(streamers))
        return view

    def select(self, split: str, streamer: str = "") -> list[VodRecord]:
        """A split's VODs (of one streamer if given); possibly none."""
        sel = selection(self.cfg, split)
        if streamer:
            sel.streamers = [streamer]
        return select_from(self.records, sel)

    def require(self, split: str) -> list[VodRecord]:
        """A split's VODs, checked for the cut the examples need; a split without shards is an error
        naming the selection and the fix."""
        records = self.select(split)
        check_cut(records, self.cfg)
        if not any(r.shards for r in records):
            c = self.cfg
            raise ValueError(f"store {c.store} has no VOD in split {split!r} for streamers={c.streamers or 'all'} "
                             f"vods={c.vods or 'all'} (val_vods={c.val_vods or '-'}, test_vods={c.test_vods or '-'}, "
                             f"fractions {c.val_fraction}/{c.test_fraction}): ingest more VODs or change "
                             "data.val_vods/test_vods or data.val_fraction/test_fraction")
        return records

    def fingerprints(self) -> dict[str, Any] | None:
        """The store's feature fingerprints (all records share them), or None if empty."""
        for rec in self.records:
            return {"video": rec.fingerprints["video"], "audio": rec.fingerprints["audio"]}
        return None


def split_shards(cfg: DataConfig, split: str, splits: RunSplits | None = None
                 ) -> tuple[list[str], dict[str, tuple[str, int]]]:
    """A split's shard urls and their (sha256, bytes) from the records, which reads verify."""
    splits = splits or RunSplits(cfg)
    records = splits.require(split)
    return shard_urls(splits.store, records), shard_checks(splits.store, records)


def cpus_per_process() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, n // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def workers(requested: int) -> int:
    """DataLoader workers: never more than the CPUs this process has (more only thrash)."""
    n = min(requested, cpus_per_process())
    if n < requested:
        log.warning("data.num_workers=%d is more than the %d CPU(s) per process here: using %d", requested,
                    cpus_per_process(), n)
    return n


def make_loader(cfg: DataConfig, tok: ChatTokenizer, split: str, micro_batch: int, rank: int, world_size: int,
                seed: int, splits: RunSplits | None = None) -> torch.utils.data.DataLoader:
    """Evaluation: one pass, each example on exactly one rank (training streams are
    trainer.stream.make_train_loader: endless, resumable). The split happens here, once: do not
    pass this loader through accelerator.prepare, which would split it again."""
    urls, checks = split_shards(cfg, split, splits)
    # ShardStream rather than a webdataset pipeline (SimpleShardList, split_by_node, split_by_worker,
    # tarfile_to_samples): wds.split_by_node leaves readers with nothing when a split has fewer shards
    # than ranks x workers, where ShardStream falls back to splitting samples, and the verified opener
    # and the typed decode would be custom stages in a pipeline too, so it would not be shorter.
    samples = ShardStream(urls, rank=rank, world_size=world_size, seed=seed, resample=False, shuffle_shards=False,
                          buffer=0, skip_errors=cfg.skip_errors, checks=checks)
    # Evaluation shuffles too (the same seeded order every time): a batch then mixes moments, so
    # the first eval_batches are not one segment and the A/V-shuffled ablation swaps real content.
    ds = ExampleStream(samples, tok, cfg, buffer=cfg.shuffle_buffer, seed=seed)
    return torch.utils.data.DataLoader(ds, batch_size=micro_batch, num_workers=workers(cfg.num_workers),
                                       collate_fn=functools.partial(collate, pad_id=tok.pad_id),
                                       generator=torch.Generator().manual_seed(seed))


def split_streamers(cfg: DataConfig, split: str = "train", splits: RunSplits | None = None) -> list[str]:
    return sorted({r.streamer for r in (splits or RunSplits(cfg)).select(split)})


def train_tokenizer(cfg: DataConfig, tc: TokenizerConfig, splits: RunSplits | None = None) -> ChatTokenizer:
    """BPE on the train split's chat, with a token per streamer of the split if data.streamer_token."""
    splits = splits or RunSplits(cfg)
    return ChatTokenizer.train(iter_texts(cfg, "train", splits), tc.vocab_size, tc.min_frequency,
                               split_streamers(cfg, "train", splits) if cfg.streamer_token else ())


def iter_texts(cfg: DataConfig, split: str = "train", splits: RunSplits | None = None) -> Iterator[str]:
    """Chat texts of a split, for training the tokenizer (context-only messages are skipped:
    they are also some other segment's messages)."""
    urls, checks = split_shards(cfg, split, splits)
    for s in ShardStream(urls, shuffle_shards=False, skip_errors=cfg.skip_errors, checks=checks):
        for m in s.chat["messages"]:
            yield m["text"]


def feature_stats(cfg: DataConfig, max_shards: int = 64, per_shard: int = 8,
                  splits: RunSplits | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and std of the video and audio rows of the train split, from the first
    samples of up to max_shards shards spread evenly over it (a cheap, deterministic estimate
    that does not come from one VOD only)."""
    urls, checks = split_shards(cfg, "train", splits)
    picked = [urls[round(i * (len(urls) - 1) / max(1, min(max_shards, len(urls)) - 1))]
              for i in range(min(max_shards, len(urls)))]
    acc: dict[str, list] = {}
    for url in dict.fromkeys(picked):
        for s in itertools.islice(ShardStream([url], shuffle_shards=False, skip_errors=cfg.skip_errors, checks=checks), per_shard):
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
