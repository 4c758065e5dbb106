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
    # a dead rank brings the job back from the latest checkpoint (restarted workers resume by themselves)
    torchrun --nproc_per_node 8 --max-restarts 3 trainer/main.py --config launch/base.toml
    # a Ray cluster: Ray Train workers run this same main (trainer/ray_train.py)
    vod2chat train --config launch/base.toml --address auto --num-workers 16
    # a new run from a trained run's weights, its vocabulary grown for new streamers (docs/operations.md)
    python trainer/main.py --config launch/debug.toml --init-from runs/debug --train.run-dir runs/debug2
    # then
    tensorboard --logdir runs/

Any config field can be overridden as section.key=value after --config; --resume continues
the run in train.run_dir from its newest intact checkpoint, data stream included (O(1): the
checkpoint holds every reader's stream state; trainer/stream.py).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from tqdm import tqdm

from vod2chat.config import load_config, replaced, save_config, to_dict
from vod2chat.shards.store import Store
from vod2chat.trainer import checkpoint, initfrom
from vod2chat.trainer.config import Config
from vod2chat.trainer.data import RunSplits, feature_stats, make_loader, split_streamers
from vod2chat.trainer.model import VodChatModel
from vod2chat.trainer.batch import to_device
from vod2chat.trainer.checkpoint import TrainState, resume, save_run
from vod2chat.trainer.processes import grad_accum_steps, init_restarted_process_group, mixed_precision, restarted
from vod2chat.trainer.report import final_summary, startup_summary
from vod2chat.trainer.steps import (BadSteps, build_optimizer, build_tokenizer, check_selectable, flat_dict, improves,
                                    log_hparams, plan_data, selection, train_step, validate)
from vod2chat.trainer.stream import make_train_loader
from vod2chat.trainer.tokenizer import ChatTokenizer

# -- the loop --------------------------------------------------------------------------
def main(cfg: Config) -> dict[str, float]:
    """One training run. The store is listed once (RunSplits): every selection of the run reads that view."""
    run_dir, t_start = Path(cfg.train.run_dir), time.perf_counter()
    resume_run = check_run_dir(cfg.train.resume, run_dir)
    init_restarted_process_group()
    # Derived values go into the run's own copy (saved, absolute paths: eval and generate run from anywhere).
    tp = cfg.tokenizer.path
    cfg = replaced(cfg, {"train.resume": resume_run, "data.store": Store(cfg.data.store).require().canonical_url,
                         "tokenizer.path": os.path.abspath(tp) if tp and "://" not in tp else tp})
    tc = cfg.train
    # One main() is one run: a process that runs several (tests, notebooks) gets this run's precision.
    # The process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    # cpu=True on a GPU-less machine: otherwise Accelerate ignores torchrun's ranks and runs them as one process each.
    # step_scheduler_with_optimizer=False: Accelerate would otherwise step the LR schedule once per
    # process per step, so its position would depend on the process count (wrong after N -> M).
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision(tc.mixed_precision),
                      log_with="tensorboard", project_dir=str(run_dir), step_scheduler_with_optimizer=False)
    set_seed(tc.seed, device_specific=False)
    accum = grad_accum_steps(tc, acc.num_processes)
    run_dir.mkdir(parents=True, exist_ok=True)
    splits = RunSplits(cfg.data)
    check_selectable(tc, splits)
    store_fps = splits.fingerprints()
    cfg, tok, tok_path, model, inherited = build_model(cfg, run_dir, acc, splits)
    optimizer, scheduler = build_optimizer(model, tc)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    start, ckpt = resume(acc, cfg, model, optimizer, scheduler, store_fps)
    if ckpt is not None:
        acc.print(f"resuming from step {start} (checkpoint {ckpt})")
    if start == 0 and not inherited:  # a resumed run has its own statistics, an init_from run its start's
        acc.unwrap_model(model).set_feature_stats(feature_stats(cfg.data, splits=splits))
    plan = plan_data(cfg, ckpt, start, acc.process_index, acc.num_processes, splits)  # the data position: O(1)
    batches = make_train_loader(plan.shards, tok, cfg.data, tc.micro_batch, tc.seed, plan.states, plan.num_workers)
    val_loader = make_loader(cfg.data, tok, "val", tc.micro_batch, acc.process_index, acc.num_processes, tc.seed,
                             splits)
    meta = {"fingerprints": store_fps, "store": cfg.data.store, "grad_accum": accum, "world_size": acc.num_processes,
            "tokenizer": {"vocab_size": tok.vocab_size}, **lineage(cfg, run_dir, splits), **selection(tc, ckpt)}
    if acc.is_main_process:  # only now: a resume that fails above leaves the run's config and curves as they were
        save_config(cfg, run_dir / "config.toml")
        acc.init_trackers("tb")
        log_hparams(acc, flat_dict(to_dict(cfg)))
        print(startup_summary(cfg, splits, acc.unwrap_model(model), plan.shards, acc.mixed_precision,
                              acc.num_processes, plan.num_workers, acc.device, start), flush=True)
    bad = BadSteps(tc.max_bad_steps, run_dir)
    state = TrainState(model=model, optimizer=optimizer, scheduler=scheduler, tok_path=tok_path, meta=meta, plan=plan,
                       batches=batches)
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not (tc.progress and acc.is_main_process))
    metrics: dict[str, float] = {}
    startup: dict[str, float] = {}
    t0 = time.perf_counter()
    for step in bar:
        improved = False
        micro = [to_device(next(batches), acc.device) for _ in range(accum)]
        out = train_step(model, optimizer, scheduler, micro, acc, tc.grad_clip)
        done = step + 1
        bad.update(out, done)
        if step == start:  # start-up cost: from entering main() to the first step done (resume included)
            startup = {"train/startup_s": time.perf_counter() - t_start}
            acc.log(startup, step=done)
        if done % tc.log_every == 0 or done == tc.steps:
            dt, t0 = time.perf_counter() - t0, time.perf_counter()
            n = min(tc.log_every, done - start) or 1
            metrics = {"train/loss": out["loss"], "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": out["grad_norm"],
                       "train/examples_per_s": out["examples"] * acc.num_processes * n / dt,
                       "train/tokens_per_s": out["tokens"] * acc.num_processes * n / dt, "train/skipped_steps": bad.total}
            if "contrastive" in out:  # the aux loss, unweighted (model.contrastive_weight)
                metrics["train/contrastive"] = out["contrastive"]
            acc.log(metrics, step=done)
            bar.set_postfix(loss=f"{out['loss']:.3f}")
        if done % tc.eval_every == 0 or done == tc.steps:
            metrics.update(validate(acc, model, val_loader, tok, cfg, done))
            improved = improves(meta, tc, metrics["val/loss"], done)
        if improved or done % tc.save_every == 0 or done == tc.steps:
            save_run(acc, cfg, done, state)
    acc.end_training()
    if acc.is_main_process:
        print(final_summary(metrics, run_dir, tc.steps), flush=True)
    return {**metrics, **startup}


def build_model(cfg: Config, run_dir: Path, acc: Accelerator,
                splits: RunSplits) -> tuple[Config, ChatTokenizer, Path, VodChatModel, bool]:
    """The run's config as it trains (its vocabulary size, the model settings an init_from run
    inherits), its tokenizer and file, and the model before the first step: a new one, or
    (train.init_from) the starting run's grown to the tokenizer; and whether it was inherited."""
    cfg, src = start_from(cfg, run_dir, acc, splits)
    tok, tok_path = build_tokenizer(cfg, run_dir, acc, splits)
    cfg = replaced(cfg, {"model.vocab_size": tok.vocab_size})
    model = initfrom.start_model(src, cfg, tok) if src else VodChatModel(cfg.model)
    return cfg, tok, tok_path, model, src is not None


def start_from(cfg: Config, run_dir: Path, acc: Accelerator,
               splits: RunSplits) -> tuple[Config, initfrom.Source | None]:
    """train.init_from on a fresh run: the starting run, checked, its tokenizer grown into run_dir.
    A run that already has checkpoints (--resume, a torchrun or Ray restart) continues from its own."""
    init = cfg.train.init_from
    if not init:
        return cfg, None
    if "://" not in init:  # workers on other nodes, the saved config
        cfg = replaced(cfg, {"train.init_from": os.path.abspath(init)})
    own = checkpoint.list_checkpoints(run_dir)
    if cfg.train.resume and own:
        saved = load_config(Config, own[-1] / checkpoint.CONFIG_FILE)  # what its weights fit
        return replaced(cfg, {"model": saved.model, "data.streamer_token": saved.data.streamer_token}), None
    cfg, src = initfrom.prepare(cfg, run_dir, acc.is_main_process, splits)
    acc.wait_for_everyone()
    return cfg, src


def lineage(cfg: Config, run_dir: Path, splits: RunSplits) -> dict:
    """meta.json's record of the streamers trained on, and of the run this one started from."""
    out: dict = {"streamers": split_streamers(cfg.data, "train", splits)}
    origin = run_dir / initfrom.ORIGIN_FILE
    if cfg.train.init_from and origin.is_file():
        out["init_from"] = checkpoint.read_json(origin)
    return out


def check_run_dir(resume: bool, run_dir: Path) -> bool:
    """Whether this run resumes: --resume needs a checkpoint (a typo in the run folder must not
    restart a long run from step 0), a torchrun restart always resumes, and a fresh run never
    overwrites another's checkpoints."""
    if resume and not restarted():  # a torchrun restart before the first save starts afresh
        checkpoint.require_checkpoint(run_dir)
    resume = resume or restarted()
    if not resume and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        # Restarting at step 0 would overwrite its checkpoints and overlay its TensorBoard curves.
        raise ValueError(f"{run_dir} already holds a run (checkpoints/): pass --resume (train.resume=true) to "
                         "continue it, or choose a new train.run_dir")
    return resume


if __name__ == "__main__":
    # The file torchrun and `accelerate launch` run: its command line is a launcher's (launch/train.py).
    from vod2chat.launch.train import cli

    sys.exit(cli())
