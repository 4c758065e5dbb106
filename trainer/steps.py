"""The pieces of a training run: setup, one optimizer step, validation, save and load.

The `accelerate launch` entry point (trainer/main.py) is the loop that calls these; evaluation,
generation and the benchmarks use `token_loss`/`to_device` from here, never the entry point.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from vod2chat.trainer.sampling import generate_batch
from vod2chat.trainer import checkpoint
from vod2chat.trainer.config import Config, TrainConfig
from vod2chat.trainer import stream
from vod2chat.trainer.data import split_streamers, train_tokenizer, workers
from vod2chat.trainer.model import VodChatModel
from vod2chat.trainer.tokenizer import ChatTokenizer

log = logging.getLogger(__name__)

AV_KEYS = ("video", "video_time", "video_mask", "audio", "audio_time", "audio_mask")


# -- setup -----------------------------------------------------------------------------
def mixed_precision(requested: str) -> str:
    cuda = torch.cuda.is_available()
    if requested == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if requested == "fp16" and not cuda:
        raise ValueError("train.mixed_precision=fp16 needs a GPU (Accelerate's fp16 silently does nothing on CPU): "
                         "use 'bf16' or 'no' on CPU")
    return requested


def grad_accum_steps(tc: TrainConfig, world_size: int) -> int:
    per_step = tc.micro_batch * world_size
    if tc.global_batch % per_step:
        raise ValueError(f"train.global_batch={tc.global_batch} is not a multiple of micro_batch x processes "
                         f"= {tc.micro_batch} x {world_size}")
    return tc.global_batch // per_step


def build_tokenizer(cfg: Config, run_dir: Path, acc: Accelerator) -> tuple[ChatTokenizer, Path]:
    path = Path(cfg.tokenizer.path) if cfg.tokenizer.path else run_dir / "tokenizer.json"
    if not path.exists() and acc.is_main_process:
        stream.pin_selection(cfg.data)  # fails fast, naming the VODs, if the split holds no message
        tok = train_tokenizer(cfg.data, cfg.tokenizer)
        tok.save(path)
    acc.wait_for_everyone()
    tok = ChatTokenizer.load(path)
    if cfg.data.streamer_token and cfg.tokenizer.path and acc.is_main_process:
        # A given tokenizer may predate a streamer (new streamers' VODs join the same store):
        # their examples then start without a token, which training alone would not reveal.
        missing = [s for s in split_streamers(cfg.data) if tok.streamer_id(s) is None]
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


def train_step(model, optimizer, scheduler, micro_batches: list[dict[str, Any]], acc: Accelerator,
               grad_clip: float) -> dict[str, float]:
    n_tokens = sum(int(b["loss_mask"].sum()) for b in micro_batches)
    total = 0.0
    for i, b in enumerate(micro_batches):
        # Gradients are all-reduced once per optimizer step, on the last micro-batch.
        sync = acc.no_sync(model) if i < len(micro_batches) - 1 else nullcontext()
        with sync, acc.autocast():
            loss_sum, _ = token_loss(model, b)
            loss = loss_sum / max(1, n_tokens)
        acc.backward(loss)
        total += loss_sum.item()
    # grad_clip 0 is "off": clip_grad_norm_ with max_norm 0 would zero every gradient.
    grad_norm = acc.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    finite = step_is_finite(acc, total, float(grad_norm))
    if finite:  # a NaN/Inf gradient would make every weight NaN for good: that step is skipped
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": total / max(1, n_tokens), "grad_norm": float(grad_norm), "tokens": n_tokens,
            "examples": sum(len(b["keys"]) for b in micro_batches), "skipped": not finite}


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
    sums = torch.zeros(3, device=acc.device)  # loss, loss with A/V shuffled, tokens
    for b in itertools.islice(loader, max_batches):
        b = to_device(b, acc.device)
        with acc.autocast():
            sums[0] += token_loss(model, b)[0]
            sums[1] += token_loss(model, shuffle_av(b))[0]
        sums[2] += b["loss_mask"].sum()
    sums = acc.reduce(sums, reduction="sum")
    model.train()
    loss, shuffled = (sums[:2] / sums[2].clamp(min=1)).tolist()
    return {"val/loss": loss, "val/ppl": math.exp(min(loss, 50)), "val/loss_av_shuffled": shuffled}


@dataclass
class DataPlan:
    """What this rank streams: the pinned shard list, its history, and where each worker starts."""

    shards: list[dict[str, Any]]
    states: list[dict[str, Any]]
    num_workers: int
    changes: list[dict[str, Any]] = field(default_factory=list)


def plan_data(cfg: Config, ckpt: Path | None, step: int, rank: int, world_size: int) -> DataPlan:
    """A fresh run pins the train split's shards; a resume continues the checkpoint's pinned
    list (new VODs join only with data.join_new_vods, appended, the step recorded) and each
    stream's saved state (remapped when processes, workers or shards changed)."""
    nw = workers(cfg.data.num_workers)
    shards = stream.load_pinned(ckpt) if ckpt else None
    changes = list(checkpoint.read_meta(ckpt).get("selection", {}).get("changes", [])) if ckpt else []
    if shards is None:
        shards = stream.pin_selection(cfg.data)
        if ckpt:
            changes.append({"step": step, "event": "selected anew: the checkpoint pinned no selection"})
    elif cfg.data.join_new_vods:
        new = stream.join_new(shards, stream.pin_selection(cfg.data))
        if new:
            shards = shards + new
            changes.append({"step": step, "event": "joined", "shards": len(new),
                            "vods": sorted({f"{sh['streamer']}/{sh['vod_id']}" for sh in new})})
    stream.check_has_messages(shards, cfg.data.store)
    saved, lay = stream.read_saved(ckpt) if ckpt else (None, None)
    states = stream.start_states(saved, lay, rank, world_size, nw, len(shards), cfg.train.seed, step)
    return DataPlan(shards, states, nw, changes)


def restarted() -> bool:
    """torchrun --max-restarts brought this process back after a rank died: resume."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def init_restarted_process_group() -> None:
    """After a torchrun restart, the process group is set up here, on keys of its own attempt.
    torchrun's agent keeps one store for every attempt, so a plain env:// init of a restarted
    group can read the dead attempt's addresses (gloo: "Connection refused", at random); Accelerate
    then uses this group as it is."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not restarted() or world < 2 or dist.is_initialized():
        return
    rank, addr, port = int(os.environ["RANK"]), os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent serves the store
    store = dist.TCPStore(addr, port, world, is_master=not agent and rank == 0, multi_tenant=not agent)
    attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=rank, world_size=world,
                            store=dist.PrefixStore(f"vod2chat/attempt_{attempt}", store))


def save(acc: Accelerator, cfg: Config, step: int, model, optimizer, scheduler, tok_path: Path,
         meta: dict[str, Any], plan: DataPlan, batches: stream.TrainBatches) -> None:
    stage = checkpoint.staging_dir(cfg.train.run_dir, step)
    acc.wait_for_everyone()
    checkpoint.write_rank_state(stage, acc.process_index, batches.state(), step)
    acc.wait_for_everyone()
    if acc.is_main_process:
        skipped = sorted({p for r in range(acc.num_processes)
                          for s in json.loads((stage / f"data_rank{r}.json").read_text())["streams"]
                          for p in s.get("skipped", [])})
        data = {"layout": stream.layout(acc.num_processes, plan.num_workers, len(plan.shards)),
                "skipped_shards": skipped}
        sel = {"file": stream.SELECTION_FILE, "shards": len(plan.shards), "changes": plan.changes,
               "vods": len({(sh["streamer"], sh["vod_id"]) for sh in plan.shards})}
        checkpoint.publish(stage, step, acc.unwrap_model(model), optimizer, scheduler, cfg,
                           {**meta, "data": data, "selection": sel}, tok_path, cfg.train.keep_last,
                           selection={"store": cfg.data.store, "shards": plan.shards})
    acc.wait_for_everyone()


def load(acc: Accelerator, cfg: Config, model, optimizer, scheduler,
         store_fps: dict[str, Any] | None) -> tuple[int, Path | None]:
    """Resume from the newest intact checkpoint: (the step to continue from, the checkpoint);
    (0, None): a fresh run."""
    ckpt = checkpoint.latest_intact(cfg.train.run_dir) if cfg.train.resume else None
    if ckpt is None:
        return 0, None
    checkpoint.check_fingerprints(checkpoint.read_meta(ckpt), store_fps, cfg.data.store)
    meta = checkpoint.load(ckpt, acc.unwrap_model(model), optimizer, scheduler, acc.process_index)
    if not (ckpt / f"rng_rank{acc.process_index}.pt").exists():
        # A rank the checkpoint did not have (N -> M > N): its own seed, fixed by (seed, step, rank).
        torch.manual_seed(cfg.train.seed * 1_000_003 + int(meta["step"]) * 1009 + acc.process_index)
    return int(meta["step"]), ckpt


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
