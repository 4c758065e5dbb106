"""A collated training batch on its way into the model: its keys, the move to a device, the loss.

Training, evaluation, generation and the benchmarks share these; nothing here needs Accelerate.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

AV_KEYS = ("video", "video_time", "video_mask", "audio", "audio_time", "audio_mask")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Features travel as float16 (as stored: half the bytes to pin and copy) and become
    float32 on the device."""
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    return {k: v.float() if torch.is_tensor(v) and v.dtype == torch.float16 else v for k, v in out.items()}


def shuffle_av(batch: dict[str, Any]) -> dict[str, Any]:
    """Ablation: each example gets another example's video and audio (rolled by half the batch;
    the validation stream is shuffled, so that is another moment, usually of another segment)."""
    n = batch["tokens"].shape[0]
    return {**batch, **{k: batch[k].roll(max(1, n // 2), dims=0) for k in AV_KEYS}}


def token_loss(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of the message tokens, and how many there were."""
    logits = model(batch["tokens"], *(batch[k] for k in AV_KEYS))
    targets = batch["tokens"].roll(-1, dims=1)
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    mask = batch["loss_mask"]
    return (ce * mask).sum(), mask.sum()
