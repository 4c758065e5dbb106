"""What a training run tells the person who started it (rank 0 only): a start-up summary of the
model, the data and the machine, warnings about data that cannot teach anything, and where the
run ended up. The same facts are in config.toml and meta.json; this is the part one reads."""

from __future__ import annotations

import logging
import os
import platform
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from vod2chat.shards.reader import select_records
from vod2chat.shards.store import Store
from vod2chat.trainer import checkpoint
from vod2chat.trainer.config import Config
from vod2chat.trainer.data import selection

log = logging.getLogger(__name__)
SHOWN_VODS = 8  # per split in the summary; the rest are counted


def cpu_description() -> str:
    """`Intel(R) Xeon(R) Platinum 8488C, bf16 native` (AVX512-BF16/AMX) or `..., no native bf16`."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    m = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    name = m.group(1).strip() if m else (platform.processor() or platform.machine() or "unknown CPU")
    native = bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", info))
    return f"{name}, {os.cpu_count()} cores, {'bf16 native' if native else 'no native bf16'}"


def vod_messages(cfg: Config, split: str, pinned: list[dict[str, Any]] | None = None) -> dict[str, int]:
    """streamer/vod_id -> messages of a split: the pinned shard list for training (what this run
    streams, joined VODs included), the store's records for the held-out splits."""
    counts: Counter[str] = Counter()
    if pinned is not None:
        for sh in pinned:
            counts[f"{sh['streamer']}/{sh['vod_id']}"] += int(sh.get("messages") or 0)
        return dict(counts)
    for rec in select_records(Store(cfg.data.store), selection(cfg.data, split)):
        counts[f"{rec.streamer}/{rec.vod_id}"] += int(rec.messages or 0)
    return dict(counts)


def _split_line(split: str, counts: dict[str, int]) -> str:
    shown = ", ".join(f"{v} ({n:,})" for v, n in sorted(counts.items())[:SHOWN_VODS])
    more = f" and {len(counts) - SHOWN_VODS} more" if len(counts) > SHOWN_VODS else ""
    return (f"  {split + ':':6s} {len(counts)} VOD{'s' if len(counts) != 1 else ''}, "
            f"{sum(counts.values()):,} messages" + (f": {shown}{more}" if counts else ""))


def startup_summary(cfg: Config, model: torch.nn.Module, pinned: list[dict[str, Any]], precision: str,
                    processes: int, num_workers: int, device: torch.device, start: int) -> str:
    """The lines printed before the first step; a training VOD without messages is a warning."""
    splits = {"train": vod_messages(cfg, "train", pinned), "val": vod_messages(cfg, "val"),
              "test": vod_messages(cfg, "test")}
    empty = sorted(v for v, n in splits["train"].items() if n == 0)
    if empty:
        log.warning("%d training VOD(s) hold 0 messages and teach nothing: %s (their chat probably misses the "
                    "video; `vod2chat store ls` shows messages per VOD)", len(empty), ", ".join(empty[:20]))
    params = sum(p.numel() for p in model.parameters())
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    lines = [
        f"training {cfg.train.run_dir}: {params / 1e6:.2f} M parameters, steps {start} -> {cfg.train.steps}, "
        f"global batch {cfg.train.global_batch} (micro-batch {cfg.train.micro_batch})",
        *(_split_line(split, counts) for split, counts in splits.items()),
        f"  precision {'fp32' if precision == 'no' else precision} (train.mixed_precision={cfg.train.mixed_precision}); "
        f"{processes} process(es) x {torch.get_num_threads()} torch threads, {num_workers} DataLoader worker(s) each",
        f"  device {device}{gpu}; CPU {cpu_description()}",
    ]
    return "\n".join(lines)


def final_summary(metrics: dict[str, float], run_dir: str | Path, step: int) -> str:
    """Where the run ended: its last validation loss and its newest checkpoint."""
    ckpt = checkpoint.latest(run_dir)
    val = (f"final validation loss {metrics['val/loss']:.4f} (perplexity {metrics['val/ppl']:.2f}; "
           f"A/V shuffled {metrics['val/loss_av_shuffled']:.4f})" if "val/loss" in metrics else "no validation pass")
    return f"done at step {step}: {val}; checkpoint {ckpt if ckpt else '(none written)'}"
