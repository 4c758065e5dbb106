"""The pieces of a training run: tokenizer and optimizer setup, one optimizer step, validation,
the data plan and sample logging.

The `accelerate launch` entry point (trainer/main.py) is the loop that calls these; the batch
helpers are trainer/batch.py, save and resume trainer/checkpoint.py, process setup
trainer/processes.py.
"""

from __future__ import annotations

import itertools
import logging
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from vod2chat.trainer.batch import losses, shuffle_av, to_device, token_loss
from vod2chat.trainer.sampling import generate_batch
from vod2chat.trainer import checkpoint
from vod2chat.trainer.config import Config, TrainConfig
from vod2chat.trainer import stream
from vod2chat.trainer.data import RunSplits, split_streamers, train_tokenizer, workers
from vod2chat.trainer.model import VodChatModel
from vod2chat.trainer.tokenizer import ChatTokenizer

log = logging.getLogger(__name__)

# -- setup -----------------------------------------------------------------------------
def build_tokenizer(cfg: Config, run_dir: Path, acc: Accelerator,
                    splits: RunSplits | None = None) -> tuple[ChatTokenizer, Path]:
    """The run's tokenizer (trained on the train split's chat unless tokenizer.path names one) and its file."""
    path = Path(cfg.tokenizer.path) if cfg.tokenizer.path else run_dir / "tokenizer.json"
    if not path.exists() and acc.is_main_process:
        stream.pin_selection(cfg.data, "train", splits)  # fails fast, naming the VODs, if the split holds no message
        tok = train_tokenizer(cfg.data, cfg.tokenizer, splits)
        tok.save(path)
    acc.wait_for_everyone()
    tok = ChatTokenizer.load(path)
    if cfg.data.streamer_token and cfg.tokenizer.path and acc.is_main_process:
        # A given tokenizer may predate a streamer (new streamers' VODs join the same store):
        # their examples then start without a token, which training alone would not reveal.
        missing = [s for s in split_streamers(cfg.data, "train", splits) if tok.streamer_id(s) is None]
        if missing:
            log.warning("%s has no token for streamer(s) %s: their examples start without one; train a "
                        "tokenizer on this store (vod2chat tokenizer) or leave tokenizer.path empty",
                        path, ", ".join(missing))
    return tok, path


def lr_lambda(tc: TrainConfig):
    def f(step: int) -> float:
        if step < tc.warmup_steps:
            return (step + 1) / tc.warmup_steps
        progress = min(1.0, (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps))
        return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def build_optimizer(model: VodChatModel, tc: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    opt = model.configure_optimizer(tc.lr, tc.weight_decay, (tc.beta1, tc.beta2))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc))


# -- steps -----------------------------------------------------------------------------
def train_step(model, optimizer, scheduler, micro_batches: list[dict[str, Any]], acc: Accelerator,
               grad_clip: float) -> dict[str, float]:
    n_tokens = sum(int(b["loss_mask"].sum()) for b in micro_batches)
    weight = contrastive_weight(acc.unwrap_model(model))
    total, aux_total = 0.0, 0.0
    for i, b in enumerate(micro_batches):
        # Gradients are all-reduced once per optimizer step, on the last micro-batch.
        sync = acc.no_sync(model) if i < len(micro_batches) - 1 else nullcontext()
        with sync, acc.autocast():
            loss_sum, _, aux = losses(model, b, weight > 0)
            loss = loss_sum / max(1, n_tokens)  # the per-token mean over the whole step
            if aux is not None:  # a per-batch mean: the step's is their mean over the micro-batches
                loss = loss + weight * aux / len(micro_batches)
                aux_total += aux.item()
        acc.backward(loss)
        total += loss_sum.item()
    # grad_clip 0 is "off": clip_grad_norm_ with max_norm 0 would zero every gradient.
    grad_norm = acc.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    finite = step_is_finite(acc, total + aux_total, float(grad_norm))
    if finite:  # a NaN/Inf gradient would make every weight NaN for good: that step is skipped
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    out = {"loss": total / max(1, n_tokens), "grad_norm": float(grad_norm), "tokens": n_tokens,
           "examples": sum(len(b["keys"]) for b in micro_batches), "skipped": not finite}
    return {**out, "contrastive": aux_total / len(micro_batches)} if weight > 0 else out


def contrastive_weight(model: torch.nn.Module) -> float:
    """The contrastive aux loss's weight (model.contrastive_weight; 0: off)."""
    cfg = model.config
    return cfg.contrastive_weight if cfg.contrastive_dim > 0 else 0.0


def step_is_finite(acc: Accelerator, loss_sum: float, grad_norm: float) -> bool:
    """The same verdict on every rank: a loss is rank-local, so one NaN anywhere skips the step everywhere."""
    bad = torch.tensor([0.0 if math.isfinite(loss_sum) and math.isfinite(grad_norm) else 1.0], device=acc.device)
    return float(acc.reduce(bad, reduction="sum")) == 0.0


class TrainingDiverged(RuntimeError):
    """train.max_bad_steps steps in a row had a non-finite loss or gradient."""


class BadSteps:
    """Steps skipped for a non-finite loss or gradient: each is a warning and counted (TensorBoard
    train/skipped_steps); train.max_bad_steps in a row stop the run before anything is saved."""

    def __init__(self, limit: int, run_dir: str | Path):
        self.limit, self.run_dir, self.in_row, self.total = limit, Path(run_dir), 0, 0

    def update(self, out: dict[str, Any], step: int) -> None:
        if not out["skipped"]:
            self.in_row = 0
            return
        self.in_row, self.total = self.in_row + 1, self.total + 1
        log.warning("step %d skipped: non-finite loss or gradient (loss %s, grad norm %s); %d in a row, the run "
                    "stops at train.max_bad_steps=%d", step, out["loss"], out["grad_norm"], self.in_row, self.limit)
        if self.in_row >= self.limit:
            last = checkpoint.latest(self.run_dir)
            raise TrainingDiverged(
                f"stopped at step {step}: {self.in_row} steps in a row had a non-finite loss or gradient "
                f"(train.max_bad_steps={self.limit}); nothing was saved after them"
                + (f", the newest checkpoint {last} is kept" if last else "")
                + ". Check the store (`vod2chat store verify`) and the learning rate, then --resume")


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, acc: Accelerator, max_batches: int) -> dict[str, float]:
    """Validation loss and perplexity, and the same with video/audio shuffled across examples."""
    model.eval()
    contrastive = contrastive_weight(model) > 0
    sums = torch.zeros(5, device=acc.device)  # loss, loss with A/V shuffled, tokens, contrastive, its batches
    for b in itertools.islice(loader, max_batches):
        b = to_device(b, acc.device)
        with acc.autocast():
            loss_sum, _, aux = losses(model, b, contrastive)
            sums[0] += loss_sum
            sums[1] += token_loss(model, shuffle_av(b))[0]
        sums[2] += b["loss_mask"].sum()
        if aux is not None:
            sums[3:] += torch.stack([aux.detach(), torch.ones((), device=acc.device)])
    sums = acc.reduce(sums, reduction="sum")
    model.train()
    loss, shuffled = (sums[:2] / sums[2].clamp(min=1)).tolist()
    out = {"val/loss": loss, "val/ppl": math.exp(min(loss, 50)), "val/loss_av_shuffled": shuffled}
    # The mean over every rank's batches, each scored against its own examples only.
    return {**out, "val/contrastive": float(sums[3] / sums[4].clamp(min=1))} if contrastive else out


def check_selectable(tc: TrainConfig, splits: RunSplits) -> None:
    """Without a validation VOD, val_loss would pick the first pass's empty 0.0 for good."""
    if tc.select == "val_loss" and not splits.select("val"):
        raise ValueError("train.select=val_loss chooses the checkpoint by validation loss, but the selection has no "
                         "validation VOD: name some in data.val_vods (or raise data.val_fraction), or set "
                         "train.select=last")


def selection(tc: TrainConfig, ckpt: Path | None) -> dict[str, Any]:
    """meta.json's "best" of a run that continues (train.select=val_loss): the record of the
    checkpoint resumed from, so the choice after a resume is the uninterrupted run's."""
    if tc.select != "val_loss" or ckpt is None:
        return {}
    best = checkpoint.best_record(checkpoint.read_meta(ckpt), ckpt / checkpoint.META_FILE)
    return {} if best is None else {"best": best}


def improves(meta: dict[str, Any], tc: TrainConfig, loss: float, step: int) -> bool:
    """train.select=val_loss: whether `loss` is the lowest validation loss so far. If it is, it
    becomes meta["best"], written into this and every later checkpoint (the run's selection)."""
    if tc.select != "val_loss" or not math.isfinite(loss):
        return False
    best = meta.get("best")
    if best is not None and loss >= best["val_loss"]:
        return False
    meta["best"] = {"step": step, "val_loss": loss}
    return True


def validate(acc: Accelerator, model, loader, tok: ChatTokenizer, cfg: Config, step: int) -> dict[str, float]:
    """One validation pass, logged, with sample messages next to real ones (train.num_samples)."""
    metrics = evaluate(acc.unwrap_model(model), loader, acc, cfg.train.eval_batches)
    acc.log(metrics, step=step)
    if acc.is_main_process and cfg.train.num_samples:
        log_samples(acc, model, loader, tok, cfg, step)
    return metrics


def plan_data(cfg: Config, ckpt: Path | None, step: int, rank: int, world_size: int,
              splits: RunSplits | None = None) -> stream.DataPlan:
    """A fresh run pins the train split's shards; a resume continues the checkpoint's pinned
    list (new VODs join only with data.join_new_vods, appended, the step recorded) and each
    stream's saved state (remapped when processes, workers or shards changed)."""
    nw = workers(cfg.data.num_workers)
    shards = checkpoint.load_pinned(ckpt) if ckpt else None
    changes = list(checkpoint.read_meta(ckpt).get("selection", {}).get("changes", [])) if ckpt else []
    if shards is None:
        shards = stream.pin_selection(cfg.data, "train", splits)
        if ckpt:
            changes.append({"step": step, "event": "selected anew: the checkpoint pinned no selection"})
    elif cfg.data.join_new_vods:
        new = stream.join_new(shards, stream.pin_selection(cfg.data, "train", splits))
        if new:
            shards = shards + new
            changes.append({"step": step, "event": "joined", "shards": len(new),
                            "vods": sorted({f"{sh.streamer}/{sh.vod_id}" for sh in new})})
    stream.check_has_messages(shards, cfg.data.store)
    saved, lay = checkpoint.read_saved(ckpt) if ckpt else (None, None)
    states = stream.start_states(saved, lay, rank, world_size, nw, len(shards), cfg.train.seed, step)
    return stream.DataPlan(shards, states, nw, changes)


def log_samples(acc: Accelerator, model, loader, tok: ChatTokenizer, cfg: Config, step: int) -> None:
    b = to_device(next(iter(loader)), acc.device)
    n = min(cfg.train.num_samples, len(b["keys"]))
    real, fake = generate_batch(acc.unwrap_model(model), b, tok, n, max_new_tokens=cfg.data.max_message_tokens)
    table = "| real | generated |\n|---|---|\n" + "\n".join(f"| {r} | {g} |" for r, g in zip(real, fake))
    acc.get_tracker("tensorboard").writer.add_text("samples", table, step)


def log_hparams(acc: Accelerator, hparams: dict[str, Any]) -> None:
    """The run's config as TensorBoard hparams, through the run's own writer: SummaryWriter.add_hparams
    (what Accelerate's init_trackers(config=...) calls) opens a second writer in a time-named
    subfolder, and TensorBoard then lists every run twice."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    writer = acc.get_tracker("tensorboard").writer
    for summary in hparams_summaries(hparams, {}):
        writer._get_file_writer().add_summary(summary)
    writer.flush()


def flat_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """TensorBoard hparams take scalars and strings only."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
