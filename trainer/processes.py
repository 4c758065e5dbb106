"""How a run's processes are set up: mixed precision, gradient accumulation over the processes, and
the process group of a process torchrun restarted after a rank died."""

from __future__ import annotations

import os

import torch

from vod2chat.trainer.config import TrainConfig


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
