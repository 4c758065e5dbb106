"""Training on a Ray cluster: Ray Train's TorchTrainer runs trainer.main.main, the very code
`accelerate launch` and `torchrun` run, in N worker processes spread over the cluster.

    vod2chat train --config launch/base.toml --address auto --num-workers 16 \\
        --store s3://bucket/store --train.run-dir /shared/runs/exp1

Ray Train starts the workers (one per GPU with use_gpu), sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR and initialises the process group (NCCL on GPUs, gloo on CPUs); Accelerate picks
that up, so the loop, checkpoints, meta.json and TensorBoard files are those of any other launch.
When a worker or its node dies, Ray Train's FailureConfig restarts the whole group (up to
ray.max_failures times) and every worker resumes from the newest intact checkpoint in
train.run_dir: the run directory must be storage every node sees (NFS, a mounted bucket).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vod2chat.config import replaced
from vod2chat.trainer import checkpoint
from vod2chat.trainer.config import Config


def _worker_loop(config: dict[str, Any]) -> None:
    import ray.train

    from vod2chat.trainer.main import main

    cfg: Config = config["cfg"]
    # A restarted group (after a failure) finds checkpoints this launch wrote: it resumes from them.
    # A fresh launch into a run with older checkpoints resumes only when asked (train.resume).
    newest = checkpoint.latest(cfg.train.run_dir)
    if newest is not None and newest.stat().st_mtime >= config["launched"]:
        cfg = replaced(cfg, {"train.resume": True})
    metrics = main(cfg)
    ray.train.report({k: float(v) for k, v in metrics.items()})


def train_on_ray(cfg: Config) -> dict[str, float]:
    """Runs cfg on the Ray cluster at cfg.ray.address with cfg.ray.num_workers workers; returns
    the final metrics of rank 0."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    rc = cfg.ray
    if cfg.train.resume:  # refused here, once, rather than in every worker and every restart of the group
        checkpoint.require_checkpoint(cfg.train.run_dir)
    if not ray.is_initialized():
        ray.init(address=rc.address or None, log_to_driver=True)
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0 if rc.use_gpu == "auto" else rc.use_gpu == "true"
    run_dir = Path(cfg.train.run_dir).resolve()
    # Workers run elsewhere: absolute paths on the shared storage (the run, and the run a new run
    # starts from); their output is interleaved in the driver's log.
    over = {"train.run_dir": str(run_dir), "train.progress": False}
    if cfg.train.init_from:
        over["train.init_from"] = str(Path(cfg.train.init_from).resolve())
    cfg = replaced(cfg, over)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg, "launched": time.time() - 1.0},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=max(1, rc.num_workers), use_gpu=use_gpu,
                                     resources_per_worker={"CPU": rc.cpus_per_worker}),
        run_config=RunConfig(name="ray", storage_path=str(run_dir), failure_config=FailureConfig(max_failures=rc.max_failures)),
    )
    result = trainer.fit()
    return dict(result.metrics or {})
