"""Train the multimodal chat model on a shard store. The `accelerate launch` entry point.

    # CPU, one process (what the tests and `make demo` run)
    python trainer/main.py --config launch/debug.toml
    # CPU, 2 processes with gloo (accelerate launch needs MPI for several CPU processes)
    torchrun --nproc_per_node 2 trainer/main.py --config launch/debug.toml
    # one GPU
    accelerate launch --config_file launch/accelerate/single_gpu.yaml trainer/main.py --config launch/base.toml
    # one node, 8 GPUs
    accelerate launch --config_file launch/accelerate/multi_gpu_8.yaml trainer/main.py --config launch/base.toml
    # many nodes (run on every node; only the rank and the head's address change)
    accelerate launch --config_file launch/accelerate/multi_node.yaml --machine_rank $RANK \
        --main_process_ip $HEAD_IP trainer/main.py --config launch/base.toml data.store=s3://bucket/store
    # then
    tensorboard --logdir runs/

Any config field can be overridden as section.key=value after --config; --resume continues
the run in train.run_dir from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

if __package__ in (None, ""):  # `python trainer/main.py` / `accelerate launch trainer/main.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from tqdm import tqdm

from launch.config import load_config, save_config, to_dict
from shards.store import Store
from trainer import checkpoint
from trainer.config import Config, TrainConfig
from trainer.data import feature_stats, iter_texts, make_loader
from trainer.model import VodChatModel
from trainer.sampling import generate_batch
from trainer.tokenizer import ChatTokenizer

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
        tok = ChatTokenizer.train(iter_texts(cfg.data, "train"), cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
        tok.save(path)
    acc.wait_for_everyone()
    return ChatTokenizer.load(path), path


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
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


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
    grad_norm = acc.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": total / max(1, n_tokens), "grad_norm": float(grad_norm), "tokens": n_tokens,
            "examples": sum(len(b["keys"]) for b in micro_batches)}


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


def save(acc: Accelerator, cfg: Config, step: int, model, optimizer, scheduler, tok_path: Path,
         meta: dict[str, Any]) -> None:
    stage = checkpoint.staging_dir(cfg.train.run_dir, step)
    acc.wait_for_everyone()
    checkpoint.write_rank_state(stage, acc.process_index)
    acc.wait_for_everyone()
    if acc.is_main_process:
        checkpoint.publish(stage, step, acc.unwrap_model(model), optimizer, scheduler, cfg,
                           {**meta, "data": {"batches_per_rank": step * meta["grad_accum"]}}, tok_path,
                           cfg.train.keep_last)
    acc.wait_for_everyone()


def load(acc: Accelerator, cfg: Config, model, optimizer, scheduler, store_fps: dict[str, Any] | None) -> int:
    """Resume from the latest checkpoint: returns the step to continue from (0: fresh run)."""
    ckpt = checkpoint.latest(cfg.train.run_dir) if cfg.train.resume else None
    if ckpt is None:
        return 0
    checkpoint.check_fingerprints(checkpoint.read_meta(ckpt), store_fps, cfg.data.store)
    meta = checkpoint.load(ckpt, acc.unwrap_model(model), optimizer, scheduler, acc.process_index)
    return int(meta["step"])


def log_samples(acc: Accelerator, model, loader, tok: ChatTokenizer, cfg: Config, step: int) -> None:
    b = to_device(next(iter(loader)), acc.device)
    n = min(cfg.train.num_samples, len(b["keys"]))
    real, fake = generate_batch(acc.unwrap_model(model), b, tok, n, max_new_tokens=cfg.data.max_message_tokens)
    table = "| real | generated |\n|---|---|\n" + "\n".join(f"| {r} | {g} |" for r, g in zip(real, fake))
    acc.get_tracker("tensorboard").writer.add_text("samples", table, step)


# -- the loop --------------------------------------------------------------------------
def main(cfg: Config) -> dict[str, float]:
    tc, run_dir = cfg.train, Path(cfg.train.run_dir)
    # One main() is one run: a process that runs several (tests, notebooks) gets this run's precision.
    # The process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    # cpu=True on a GPU-less machine: otherwise Accelerate ignores torchrun's ranks and runs them as one process each.
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision(tc.mixed_precision),
                      log_with="tensorboard", project_dir=str(run_dir))
    set_seed(tc.seed, device_specific=False)
    accum = grad_accum_steps(tc, acc.num_processes)
    run_dir.mkdir(parents=True, exist_ok=True)
    tok, tok_path = build_tokenizer(cfg, run_dir, acc)
    cfg.model.vocab_size = tok.vocab_size
    store_fps = Store(cfg.data.store).fingerprints()
    model = VodChatModel(cfg.model)
    optimizer, scheduler = build_optimizer(model, tc)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    start = load(acc, cfg, model, optimizer, scheduler, store_fps)
    if start == 0:  # a resumed run has its own statistics, from the checkpoint
        acc.unwrap_model(model).set_feature_stats(feature_stats(cfg.data))
    if acc.is_main_process:
        save_config(cfg, run_dir / "config.toml")
        acc.init_trackers("tb", config=_flat(to_dict(cfg)))
    train_loader = make_loader(cfg.data, tok, "train", tc.micro_batch, acc.process_index, acc.num_processes, tc.seed, True)
    val_loader = make_loader(cfg.data, tok, "val", tc.micro_batch, acc.process_index, acc.num_processes, tc.seed, False)
    batches: Iterator = itertools.islice(iter(train_loader), start * accum, None)  # the data position
    meta = {"fingerprints": store_fps, "store": cfg.data.store, "grad_accum": accum, "world_size": acc.num_processes,
            "tokenizer": {"vocab_size": tok.vocab_size}}
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not (tc.progress and acc.is_main_process))
    metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    for step in bar:
        micro = [to_device(next(batches), acc.device) for _ in range(accum)]
        out = train_step(model, optimizer, scheduler, micro, acc, tc.grad_clip)
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            dt, t0 = time.perf_counter() - t0, time.perf_counter()
            n = min(tc.log_every, done - start) or 1
            metrics = {"train/loss": out["loss"], "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": out["grad_norm"],
                       "train/examples_per_s": out["examples"] * acc.num_processes * n / dt,
                       "train/tokens_per_s": out["tokens"] * acc.num_processes * n / dt}
            acc.log(metrics, step=done)
            bar.set_postfix(loss=f"{out['loss']:.3f}")
        if done % tc.eval_every == 0 or done == tc.steps:
            metrics.update(evaluate(acc.unwrap_model(model), val_loader, acc, tc.eval_batches))
            acc.log({k: v for k, v in metrics.items() if k.startswith("val/")}, step=done)
            if acc.is_main_process and tc.num_samples:
                log_samples(acc, model, val_loader, tok, cfg, done)
        if done % tc.save_every == 0 or done == tc.steps:
            save(acc, cfg, done, model, optimizer, scheduler, tok_path, meta)
    acc.end_training()
    return metrics


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """TensorBoard hparams take scalars and strings only."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="TOML config (launch/debug.toml, launch/base.toml)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.run_dir")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=100 data.store=./store")
    a = p.parse_args(argv)
    cfg = load_config(Config, a.config, a.overrides)
    cfg.train.resume = cfg.train.resume or a.resume
    return cfg


if __name__ == "__main__":
    main(parse_args())
