"""Checkpoints that resume a run exactly, and never leave a half-written one behind.

    {run_dir}/checkpoints/step_0000500/
        model.pt  optim.pt  sched.pt  rng_rank{r}.pt  data_rank{r}.json  selection.json
        meta.json  config.toml  tokenizer.json

A checkpoint directory is written under a temporary name and renamed when complete, so a
crash mid-save leaves the previous checkpoints untouched. meta.json is for people, for
refusing a store whose features were made by other encoders, and lists every other file's
size and sha256: a resume verifies them and falls back to the newest intact checkpoint.
data_rank{r}.json holds rank r's stream states (trainer/stream.py), selection.json the shard
list the run trains on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vod2chat.config import save_config
from vod2chat.shards.store import fingerprint_diff

PREFIX = "step_"
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (missing, corrupt, truncated, or not plain tensors)."""


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


def write_rank_state(stage: Path, rank: int, data_state: dict[str, Any] | None = None) -> None:
    torch.save(rng_state(), stage / f"rng_rank{rank}.pt")
    if data_state is not None:
        (stage / f"data_rank{rank}.json").write_text(json.dumps(data_state, separators=(",", ":")))


def file_digest(path: Path) -> dict[str, Any]:
    sha, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
            n += len(block)
    return {"bytes": n, "sha256": sha.hexdigest()}


def publish(stage: Path, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any, cfg: Any,
            meta: dict[str, Any], tokenizer_path: str | Path, keep_last: int,
            selection: dict[str, Any] | None = None) -> Path:
    """Main process only, after every rank wrote its RNG and data states into `stage`."""
    torch.save(model.state_dict(), stage / "model.pt")
    torch.save(optimizer.state_dict(), stage / "optim.pt")
    torch.save(scheduler.state_dict(), stage / "sched.pt")
    save_config(cfg, stage / "config.toml")
    shutil.copy(tokenizer_path, stage / "tokenizer.json")
    if selection is not None:
        (stage / "selection.json").write_text(json.dumps(selection, separators=(",", ":")))
    files = {p.name: file_digest(p) for p in sorted(stage.iterdir()) if p.is_file() and p.name != "meta.json"}
    (stage / "meta.json").write_text(json.dumps({"step": step, **meta, "files": files}, indent=1, sort_keys=True))
    final = stage.parent / f"{PREFIX}{step:07d}"
    if final.exists():  # re-saving a step after a resume: replace it whole
        shutil.rmtree(final)
    stage.rename(final)
    for old in list_checkpoints(stage.parent.parent)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)
    return final


def read_meta(ckpt: str | Path) -> dict[str, Any]:
    p = Path(ckpt) / "meta.json"
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{p}: cannot read ({e}); the checkpoint is damaged") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{p}: not a checkpoint's meta.json (no integer 'step'); the checkpoint is damaged")
    return meta


def verify(ckpt: str | Path) -> list[str]:
    """Problems with a checkpoint's files against the sizes and sha256 in its meta.json (a
    checkpoint from before they were recorded: only that its weights exist)."""
    ckpt = Path(ckpt)
    try:
        files = read_meta(ckpt).get("files")
    except CheckpointError as e:
        return [str(e)]
    if not files:
        return [] if (ckpt / "model.pt").exists() else [f"{ckpt / 'model.pt'}: missing"]
    problems = []
    for name, want in sorted(files.items()):
        p = ckpt / name
        if "/" in name or "\\" in name or name.startswith("."):
            problems.append(f"{ckpt / 'meta.json'}: lists an odd file name {name!r}")
        elif not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != want.get("bytes"):
            problems.append(f"{p}: {p.stat().st_size} bytes, meta.json says {want.get('bytes')} (truncated?)")
        elif file_digest(p)["sha256"] != want.get("sha256"):
            problems.append(f"{p}: sha256 differs from meta.json's (altered or corrupt)")
    return problems


def latest_intact(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose files match its meta.json; each newer damaged one is named in
    a warning and passed over (a node lost mid-write on shared storage, a truncated copy)."""
    found, bad = list_checkpoints(run_dir), []
    for ckpt in reversed(found):
        problems = verify(ckpt)
        if not problems:
            return ckpt
        bad.extend(problems)
        log.warning("checkpoint %s is damaged, falling back to an older one: %s", ckpt, "; ".join(problems))
    if found:  # a resume must never silently become a fresh run over a run's checkpoints
        raise CheckpointError(f"no intact checkpoint in {ckpt_root(run_dir)}: {'; '.join(bad)}. "
                              "Remove the damaged checkpoints to start afresh, or restore them")
    return None


def check_fingerprints(ckpt_meta: dict[str, Any], store_fps: dict[str, Any] | None, store: str) -> None:
    """A model trained on one feature space is meaningless on another: refuse, naming both."""
    have = ckpt_meta.get("fingerprints")
    if have is None or store_fps is None or have == store_fps:
        return
    diff, _ = fingerprint_diff(store_fps, have, "here", "in the checkpoint")
    raise ValueError(f"store {store}: features made with other encoder settings than the checkpoint was trained on "
                     f"({diff}); ingest the VODs with the checkpoint's encoders, or train a new run on this store")


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
    problems = verify(ckpt)
    if problems:
        raise CheckpointError(f"checkpoint {ckpt} is damaged: {'; '.join(problems)}")
    cfg = load_config(Config, ckpt / "config.toml")
    tok = ChatTokenizer.load(ckpt / "tokenizer.json")
    cfg.model.vocab_size = tok.vocab_size
    model = VodChatModel(cfg.model)
    model.load_state_dict(load_tensors(ckpt / "model.pt"))
    model.to(device).eval()
    return model, tok, cfg, {**read_meta(ckpt), "checkpoint": str(ckpt)}
