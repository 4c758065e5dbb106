"""Checkpoints that resume a run exactly, and never leave a half-written one behind.

    {run_dir}/checkpoints/step_0000500/
        model.pt  optim.pt  sched.pt  rng_rank{r}.pt  meta.json  config.toml  tokenizer.json

A checkpoint directory is written under a temporary name and renamed when complete, so a
crash mid-save leaves the previous checkpoints untouched. meta.json is for people and for
refusing a store whose features were made by other encoders.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vod2chat.config import save_config

PREFIX = "step_"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (corrupt, truncated, or not plain tensors)."""


def load_tensors(path: str | Path) -> Any:
    """A checkpoint file, read with weights_only=True: run directories live on shared disks and
    buckets, and a pickle planted there must never run. The error names the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised naming the file
        why = ("it holds objects other than tensors and plain numbers (a pickle that could run code: refused)"
               if isinstance(e, pickle.UnpicklingError) else f"{type(e).__name__}: {str(e)[:200]}")
        raise CheckpointError(f"{path}: not a readable vod2chat checkpoint file; {why}. "
                              "Remove that checkpoint (or the run) and use another") from e


def ckpt_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = ckpt_root(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "meta.json").exists())


def latest(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain numbers, so that `torch.load(weights_only=True)`
    reads it back: a run directory is shared storage, and unpickling a planted file runs its code."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["mt"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def staging_dir(run_dir: str | Path, step: int) -> Path:
    """Where every rank writes its part before the main process publishes the checkpoint."""
    d = ckpt_root(run_dir) / f".tmp-{PREFIX}{step:07d}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_rank_state(stage: Path, rank: int) -> None:
    torch.save(rng_state(), stage / f"rng_rank{rank}.pt")


def publish(stage: Path, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any, cfg: Any,
            meta: dict[str, Any], tokenizer_path: str | Path, keep_last: int) -> Path:
    """Main process only, after every rank wrote its RNG state into `stage`."""
    torch.save(model.state_dict(), stage / "model.pt")
    torch.save(optimizer.state_dict(), stage / "optim.pt")
    torch.save(scheduler.state_dict(), stage / "sched.pt")
    save_config(cfg, stage / "config.toml")
    shutil.copy(tokenizer_path, stage / "tokenizer.json")
    (stage / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=1, sort_keys=True))
    final = stage.parent / f"{PREFIX}{step:07d}"
    if final.exists():  # re-saving a step after a resume: replace it whole
        shutil.rmtree(final)
    stage.rename(final)
    for old in list_checkpoints(stage.parent.parent)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)
    return final


def read_meta(ckpt: str | Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / "meta.json").read_text())


def check_fingerprints(ckpt_meta: dict[str, Any], store_fps: dict[str, Any] | None, store: str) -> None:
    """A model trained on one feature space is meaningless on another: refuse, naming both."""
    have = ckpt_meta.get("fingerprints")
    if have is None or store_fps is None or have == store_fps:
        return
    raise ValueError(
        f"store {store} has feature fingerprints\n  {json.dumps(store_fps, sort_keys=True)}\n"
        f"but the checkpoint was trained on\n  {json.dumps(have, sort_keys=True)}\n"
        "Ingest the VODs with the checkpoint's encoders, or train a new run on this store."
    )


def load(ckpt: str | Path, model: torch.nn.Module, optimizer: Any | None, scheduler: Any | None, rank: int) -> dict[str, Any]:
    ckpt = Path(ckpt)
    model.load_state_dict(load_tensors(ckpt / "model.pt"))
    if optimizer is not None:
        optimizer.load_state_dict(load_tensors(ckpt / "optim.pt"))
    if scheduler is not None:
        scheduler.load_state_dict(load_tensors(ckpt / "sched.pt"))
    rng = ckpt / f"rng_rank{rank}.pt"
    if rng.exists():
        set_rng_state(load_tensors(rng))
    return read_meta(ckpt)


def resolve(run_dir_or_ckpt: str | Path) -> Path:
    """A checkpoint directory, or a run directory's latest checkpoint."""
    p = Path(run_dir_or_ckpt)
    if (p / "meta.json").exists() and (p / "model.pt").exists():
        return p
    ckpt = latest(p)
    if ckpt is None:
        raise FileNotFoundError(f"{p} is neither a checkpoint nor a run with checkpoints (expected "
                                f"{ckpt_root(p)}/{PREFIX}*/meta.json): train first, or pass --run <run_dir>")
    return ckpt


def load_run(run_dir_or_ckpt: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any, Any, dict[str, Any]]:
    """(model in eval mode on `device`, tokenizer, the run's Config, meta) of a checkpoint, or of
    a run's latest one. meta gains "checkpoint": the directory loaded."""
    from vod2chat.config import load_config
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.model import VodChatModel
    from vod2chat.trainer.tokenizer import ChatTokenizer

    ckpt = resolve(run_dir_or_ckpt)
    cfg = load_config(Config, ckpt / "config.toml")
    tok = ChatTokenizer.load(ckpt / "tokenizer.json")
    cfg.model.vocab_size = tok.vocab_size
    model = VodChatModel(cfg.model)
    model.load_state_dict(load_tensors(ckpt / "model.pt"))
    model.to(device).eval()
    return model, tok, cfg, {**read_meta(ckpt), "checkpoint": str(ckpt)}
