"""What a training run tells the person who started it (rank 0 only): a start-up summary of the
model, the data and the machine, warnings about data that cannot teach anything, and where the
run ended up. The same facts are in config.toml and meta.json; this is the part one reads."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import torch

from vod2chat.ingest.precision import machine_line
from vod2chat.trainer import checkpoint
from vod2chat.trainer.config import Config
from vod2chat.trainer.data import RunSplits
from vod2chat.trainer.stream import PinnedShard

log = logging.getLogger(__name__)
SHOWN_VODS = 8  # per split in the summary; the rest are counted


def vod_messages(splits: RunSplits, split: str, pinned: list[PinnedShard] | None = None) -> dict[str, int]:
    """streamer/vod_id -> messages of a split: the pinned shard list for training (what this run
    streams, joined VODs included), the run's one listing of the store for the held-out splits."""
    counts: Counter[str] = Counter()
    if pinned is not None:
        for sh in pinned:
            counts[f"{sh.streamer}/{sh.vod_id}"] += sh.messages
        return dict(counts)
    for rec in splits.select(split):
        counts[f"{rec.streamer}/{rec.vod_id}"] += int(rec.messages or 0)
    return dict(counts)


def _split_line(split: str, counts: dict[str, int]) -> str:
    shown = ", ".join(f"{v} ({n:,})" for v, n in sorted(counts.items())[:SHOWN_VODS])
    more = f" and {len(counts) - SHOWN_VODS} more" if len(counts) > SHOWN_VODS else ""
    return (f"  {split + ':':6s} {len(counts)} VOD{'s' if len(counts) != 1 else ''}, "
            f"{sum(counts.values()):,} messages" + (f": {shown}{more}" if counts else ""))


def startup_summary(cfg: Config, splits: RunSplits, model: torch.nn.Module, pinned: list[PinnedShard],
                    precision: str, processes: int, num_workers: int, device: torch.device, start: int) -> str:
    """The lines printed before the first step; a training VOD without messages is a warning."""
    counts = {"train": vod_messages(splits, "train", pinned), "val": vod_messages(splits, "val"),
              "test": vod_messages(splits, "test")}
    empty = sorted(v for v, n in counts["train"].items() if n == 0)
    if empty:
        log.warning("%d training VOD(s) hold 0 messages and teach nothing: %s (their chat probably misses the "
                    "video; `vod2chat store ls` shows messages per VOD)", len(empty), ", ".join(empty[:20]))
    params = sum(p.numel() for p in model.parameters())
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    lines = [
        f"training {cfg.train.run_dir}: {params / 1e6:.2f} M parameters, steps {start} -> {cfg.train.steps}, "
        f"global batch {cfg.train.global_batch} (micro-batch {cfg.train.micro_batch})",
        *(_split_line(split, n) for split, n in counts.items()),
        f"  precision {'fp32' if precision == 'no' else precision} (train.mixed_precision={cfg.train.mixed_precision}); "
        f"{processes} process(es) x {torch.get_num_threads()} torch threads, {num_workers} DataLoader worker(s) each",
        f"  device {device}{gpu}; {machine_line()}",
    ]
    return "\n".join(lines)


def final_summary(metrics: dict[str, float], run_dir: str | Path, step: int) -> str:
    """Where the run ended: its last validation loss and the checkpoint the run stands for."""
    ckpt, newest = checkpoint.selected(run_dir), checkpoint.latest(run_dir)
    val = (f"final validation loss {metrics['val/loss']:.4f} (perplexity {metrics['val/ppl']:.2f}; "
           f"A/V shuffled {metrics['val/loss_av_shuffled']:.4f})" if "val/loss" in metrics else "no validation pass")
    which = (f" (the lowest validation loss, {checkpoint.read_meta(ckpt)['best']['val_loss']:.4f}; newest {newest})"
             if ckpt != newest else "")
    return f"done at step {step}: {val}; checkpoint {ckpt if ckpt else '(none written)'}{which}"
