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
    return summed_ce(model(batch["tokens"], *(batch[k] for k in AV_KEYS)), batch)


def summed_ce(logits: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    targets = batch["tokens"].roll(-1, dims=1)
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    mask = batch["loss_mask"]
    return (ce * mask).sum(), mask.sum()


def losses(model: torch.nn.Module, batch: dict[str, Any],
           contrastive: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """token_loss's (sum, count) and, with `contrastive` (model.contrastive_dim > 0), the batch's
    contrastive loss (a mean), from one forward pass."""
    if not contrastive:
        return (*token_loss(model, batch), None)
    mm = message_mask(batch["loss_mask"])
    logits, av, text, scale = model(batch["tokens"], *(batch[k] for k in AV_KEYS), message_mask=mm)
    return (*summed_ce(logits, batch), contrastive_loss(av, text, scale, message_ids(batch["tokens"], mm)))


def message_mask(loss_mask: torch.Tensor) -> torch.Tensor:
    """True at the message's own tokens: loss_mask marks the positions that predict them and the
    <eos> (n_prefix - 1 .. end - 2), so the message is where it and its shift by one overlap."""
    return loss_mask & loss_mask.roll(1, dims=1)


def message_ids(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each message's tokens moved to the front of its row, -1 after them: equal rows are equal messages."""
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    n = mask.sum(1, keepdim=True)
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None]
    return torch.where(pos < n, tokens.gather(1, order), -1)


def contrastive_loss(av: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) between unit A/V and message embeddings [B, dim]: each window
    must pick its message among the batch's, and each message its window. In-batch negatives
    only: under DDP each rank (and each accumulated micro-batch) uses its own examples, no
    all-gather. Examples without message tokens (ids all -1) are left out. Identical messages
    (emote-only chat is common) are all positives of each other's windows, soft targets: as
    negatives they would push apart windows that caused the very same reaction. Fewer than two
    examples: 0, still connected to the parameters, so DDP sees their (zero) gradients."""
    valid = (ids >= 0).any(1)
    if int(valid.sum()) < 2:
        return (av.sum() + text.sum() + scale) * 0.0
    av, text, ids = av[valid].float(), text[valid].float(), ids[valid]
    logits = scale * av @ text.T  # [n windows, n messages]
    same = (ids[:, None] == ids[None]).all(-1).float()
    targets = same / same.sum(1, keepdim=True)  # symmetric: the same targets serve both directions
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
