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

import errno
import json
import logging
import math
import pickle
import random
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from vod2chat.config import save_config
from vod2chat.shards.store import fingerprint_diff, sha256_of
from vod2chat.trainer import stream

if TYPE_CHECKING:
    from accelerate import Accelerator

    from vod2chat.trainer.config import Config

PREFIX = "step_"
DAMAGED = ".damaged"  # a damaged checkpoint set aside by pruning: step_0000500.damaged
_NAME = re.compile(rf"^{PREFIX}\d+$")
# The files of a checkpoint directory: spelled here only.
MODEL_FILE, OPTIM_FILE, SCHED_FILE = "model.pt", "optim.pt", "sched.pt"
META_FILE, CONFIG_FILE, TOKENIZER_FILE, SELECTION_FILE = "meta.json", "config.toml", "tokenizer.json", "selection.json"


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def data_file(rank: int) -> str:
    return f"data_rank{rank}.json"

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
    return sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / META_FILE).exists())


def require_checkpoint(run_dir: str | Path) -> None:
    """--resume into a folder without a checkpoint (a typo in train.run_dir) would silently restart a
    long run from step 0: an error naming the folder."""
    run_dir = Path(run_dir)
    if not list_checkpoints(run_dir):
        where = "does not exist" if not run_dir.exists() else f"holds no checkpoint ({ckpt_root(run_dir)}/{PREFIX}*)"
        raise CheckpointError(f"--resume: {run_dir} {where}: check train.run_dir, or drop --resume to start a new "
                              "run there")


def latest(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def best_record(meta: dict[str, Any], where: Path) -> dict[str, Any] | None:
    """meta.json's "best" (train.select=val_loss: {"step", "val_loss"}), checked; None: the run
    selects its newest checkpoint. Only a step number is read from the file, never a path: the
    directory is built here."""
    best = meta.get("best")
    if best is None:
        return None
    step = best.get("step") if isinstance(best, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{where}: \"best\" must be {{\"step\": N, \"val_loss\": x}} with N a step number, "
                              f"got {str(best)[:80]}; pass a checkpoint directory instead of the run")
    loss = best.get("val_loss")
    if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not math.isfinite(loss):
        raise CheckpointError(f"{where}: \"best\" has no finite val_loss ({str(loss)[:40]}); the checkpoint is "
                              "damaged: pass a checkpoint directory instead of the run")
    return {"step": step, "val_loss": float(loss)}


def best_step(meta: dict[str, Any], where: Path) -> int | None:
    best = best_record(meta, where)
    return None if best is None else best["step"]


def selected(run_dir: str | Path) -> Path | None:
    """The checkpoint a run directory stands for: the newest, or (train.select=val_loss) the one
    of the lowest validation loss that its newest checkpoint's meta.json names."""
    newest = latest(run_dir)
    if newest is None:
        return None
    step = best_step(read_meta(newest), newest / META_FILE)
    if step is None:
        return newest
    chosen = ckpt_root(run_dir) / f"{PREFIX}{step:07d}"
    if chosen not in list_checkpoints(run_dir):
        raise CheckpointError(f"{newest / META_FILE} selects step {step} (lowest validation loss) but {chosen} is "
                              f"missing; pass a checkpoint directory instead of the run (e.g. {newest})")
    return chosen


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


def save_tensors(obj: Any, path: Path) -> None:
    """torch.save through a Python file: a full disk then surfaces as OSError(ENOSPC) (torch's own
    writer reports it only as an "enforce fail" message)."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def _disk_full(e: BaseException | None) -> bool:
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


class DiskFullError(OSError):
    """The run directory's disk filled up while a checkpoint was written."""


@contextmanager
def disk_full_is_one_error(stage: Path, step: int) -> Iterator[None]:
    """A full disk mid-save: the half-written staging directory is removed and the error is one
    line naming where, not torch's writer message; the published checkpoints are untouched."""
    try:
        yield
    except Exception as e:
        if not _disk_full(e):
            raise
        shutil.rmtree(stage, ignore_errors=True)
        err = DiskFullError(f"disk full at {stage.parent}: checkpoint step {step} was not written (nothing half-written "
                            "is left, the previous checkpoints are kept); free space there and continue with --resume")
        err.errno = errno.ENOSPC
        raise err from None


def write_rank_state(stage: Path, rank: int, data_state: dict[str, Any] | None = None, step: int = 0) -> None:
    with disk_full_is_one_error(stage, step):
        save_tensors(rng_state(), stage / rng_file(rank))
        if data_state is not None:
            (stage / data_file(rank)).write_text(json.dumps(data_state, separators=(",", ":")))


def non_finite(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict holding NaN or Inf."""
    if torch.is_tensor(state):
        return [prefix or "tensor"] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    return [n for k, v in items for n in non_finite(v, f"{prefix}.{k}" if prefix else str(k))]


def check_finite(model_state: dict[str, Any], optim_state: dict[str, Any], step: int, root: Path) -> None:
    """A checkpoint of NaN/Inf weights would replace good ones under keep_last: never written."""
    bad = non_finite(model_state) + [f"optimizer {n}" for n in non_finite(optim_state.get("state", {}))]
    if bad:
        raise CheckpointError(f"not writing checkpoint step {step}: {len(bad)} tensors hold NaN/Inf ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}); the checkpoints in {root} are kept. The training "
                              "diverged or read non-finite features: check the store with `vod2chat store verify`")


def file_digest(path: Path) -> dict[str, Any]:
    """A checkpoint file's entry in meta.json."""
    with open(path, "rb") as f:
        n, sha = sha256_of(f)
    return {"bytes": n, "sha256": sha}


def publish(stage: Path, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any, cfg: Any,
            meta: dict[str, Any], tokenizer_path: str | Path, keep_last: int,
            selection: dict[str, Any] | None = None) -> Path:
    """Main process only, after every rank wrote its RNG and data states into `stage`."""
    model_state, optim_state = model.state_dict(), optimizer.state_dict()
    try:
        check_finite(model_state, optim_state, step, stage.parent)
    except CheckpointError:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    with disk_full_is_one_error(stage, step):
        final = _write_and_rename(stage, step, model_state, optim_state, scheduler, cfg, meta, tokenizer_path,
                                  selection)
    best = best_step(meta, stage / META_FILE)
    prune(stage.parent.parent, keep_last, final, keep=None if best is None else stage.parent / f"{PREFIX}{best:07d}")
    return final


def _write_and_rename(stage: Path, step: int, model_state: dict[str, Any], optim_state: dict[str, Any],
                      scheduler: Any, cfg: Any, meta: dict[str, Any], tokenizer_path: str | Path,
                      selection: dict[str, Any] | None) -> Path:
    save_tensors(model_state, stage / MODEL_FILE)
    save_tensors(optim_state, stage / OPTIM_FILE)
    save_tensors(scheduler.state_dict(), stage / SCHED_FILE)
    save_config(cfg, stage / CONFIG_FILE)
    shutil.copy(tokenizer_path, stage / TOKENIZER_FILE)
    if selection is not None:
        (stage / SELECTION_FILE).write_text(json.dumps(selection, separators=(",", ":")))
    files = {p.name: file_digest(p) for p in sorted(stage.iterdir()) if p.is_file() and p.name != META_FILE}
    (stage / META_FILE).write_text(json.dumps({"step": step, **meta, "files": files}, indent=1, sort_keys=True))
    final = stage.parent / f"{PREFIX}{step:07d}"
    if final.exists():  # re-saving a step after a resume: replace it whole
        shutil.rmtree(final)
    stage.rename(final)
    return final


def set_aside(ckpt: Path, problems: list[str]) -> Path:
    """A damaged checkpoint is renamed out of the way (kept for a person to look at, never
    resumed from, never counted as kept): step_0000500 -> step_0000500.damaged."""
    dest, n = ckpt.with_name(ckpt.name + DAMAGED), 1
    while dest.exists():
        dest, n = ckpt.with_name(f"{ckpt.name}{DAMAGED}.{n}"), n + 1
    ckpt.rename(dest)
    log.warning("checkpoint %s is damaged (%s): set aside as %s", ckpt, "; ".join(problems), dest.name)
    return dest


def prune(run_dir: str | Path, keep_last: int, newest: Path | None = None, keep: Path | None = None) -> list[Path]:
    """Keep the `keep_last` newest INTACT checkpoints (0: all), and `keep` (the selected one of
    train.select=val_loss) beside them. Every checkpoint is verified first (sizes and sha256
    against its meta.json; `newest`, just written, is known intact): damaged ones are set aside,
    so a damaged newer checkpoint can never push intact ones out. Returns the checkpoints removed."""
    if keep_last <= 0:
        return []
    intact = []
    for ckpt in reversed(list_checkpoints(run_dir)):  # newest first
        problems = [] if ckpt == newest else verify(ckpt)
        if problems:
            set_aside(ckpt, problems)
        else:
            intact.append(ckpt)
    removed = [old for old in intact[keep_last:] if old != keep]
    for old in removed:
        shutil.rmtree(old)
    return removed


def read_json(p: Path) -> Any:
    """A JSON file of a checkpoint (shared storage: anything may be there); errors name it."""
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{p}: cannot read as JSON ({e}); the checkpoint is damaged") from None


def load_pinned(ckpt: Path) -> list[stream.PinnedShard] | None:
    """The selection a checkpoint trained on (None: an older checkpoint without one). Paths come
    from a file on shared storage: each must be a plain shard path inside the store."""
    p = ckpt / SELECTION_FILE
    if not p.exists():
        return None
    shards = read_json(p)
    shards = shards.get("shards") if isinstance(shards, dict) else None
    if not isinstance(shards, list):
        raise ValueError(f"{p}: no 'shards' list; the checkpoint is damaged")
    return [stream.PinnedShard.from_json(sh, str(p)) for sh in shards]


def read_saved(ckpt: Path) -> tuple[list[dict[str, Any]] | None, dict[str, int] | None]:
    """Every rank's saved data state of a checkpoint, and the layout it was saved with."""
    meta = read_meta(ckpt)
    lay = meta.get("data", {}).get("layout")
    if lay is None:
        return None, None
    saved = [read_json(ckpt / data_file(r)) for r in range(lay["world_size"])]
    return saved, lay


def read_meta(ckpt: str | Path) -> dict[str, Any]:
    p = Path(ckpt) / META_FILE
    meta = read_json(p)
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
        return [] if (ckpt / MODEL_FILE).exists() else [f"{ckpt / MODEL_FILE}: missing"]
    problems = []
    for name, want in sorted(files.items()):
        p = ckpt / name
        if "/" in name or "\\" in name or name.startswith("."):
            problems.append(f"{ckpt / META_FILE}: lists an odd file name {name!r}")
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
    weights = load_tensors(ckpt / MODEL_FILE)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # torch's shape mismatch: one line per tensor
        raise ValueError(model_mismatch(ckpt, model.config, e)) from None
    if optimizer is not None:
        optimizer.load_state_dict(load_tensors(ckpt / OPTIM_FILE))
    if scheduler is not None:
        scheduler.load_state_dict(load_tensors(ckpt / SCHED_FILE))
    rng = ckpt / rng_file(rank)
    if rng.exists():
        set_rng_state(load_tensors(rng))
    return read_meta(ckpt)


# -- a training run's save and resume -------------------------------------------------
@dataclass
class TrainState:
    """What a checkpoint of a training run holds: the prepared model, optimizer and LR schedule,
    the tokenizer file, the run's meta (fingerprints, store, batch layout), the data plan and the
    training stream, whose readers' states are saved per rank."""

    model: Any
    optimizer: Any
    scheduler: Any
    tok_path: Path
    meta: dict[str, Any]
    plan: stream.DataPlan
    batches: stream.TrainBatches


def save_run(acc: Accelerator, cfg: Config, step: int, st: TrainState) -> None:
    """Every rank's stream state, then (main process) the checkpoint of `step`, published whole."""
    stage = staging_dir(cfg.train.run_dir, step)
    acc.wait_for_everyone()
    write_rank_state(stage, acc.process_index, st.batches.state(), step)
    acc.wait_for_everyone()
    if acc.is_main_process:
        plan = st.plan
        skipped = sorted({p for r in range(acc.num_processes)
                          for s in read_json(stage / data_file(r))["streams"]
                          for p in s.get("skipped", [])})
        data = {"layout": stream.layout(acc.num_processes, plan.num_workers, len(plan.shards)),
                "skipped_shards": skipped}
        sel = {"file": SELECTION_FILE, "shards": len(plan.shards), "changes": plan.changes,
               "vods": len({(sh.streamer, sh.vod_id) for sh in plan.shards})}
        publish(stage, step, acc.unwrap_model(st.model), st.optimizer, st.scheduler, cfg,
                {**st.meta, "data": data, "selection": sel}, st.tok_path, cfg.train.keep_last,
                selection={"store": cfg.data.store, "shards": [sh.to_json() for sh in plan.shards]})
    acc.wait_for_everyone()


def resume(acc: Accelerator, cfg: Config, model, optimizer, scheduler,
           store_fps: dict[str, Any] | None) -> tuple[int, Path | None]:
    """Resume from the newest intact checkpoint: (the step to continue from, the checkpoint);
    (0, None): a fresh run."""
    ckpt = latest_intact(cfg.train.run_dir) if cfg.train.resume else None
    if ckpt is None:
        return 0, None
    check_fingerprints(read_meta(ckpt), store_fps, cfg.data.store)
    meta = load(ckpt, acc.unwrap_model(model), optimizer, scheduler, acc.process_index)
    if not (ckpt / rng_file(acc.process_index)).exists():
        # A rank the checkpoint did not have (N -> M > N): its own seed, fixed by (seed, step, rank).
        torch.manual_seed(cfg.train.seed * 1_000_003 + int(meta["step"]) * 1009 + acc.process_index)
    return int(meta["step"]), ckpt


def model_mismatch(ckpt: Path, model_cfg: Any, err: Exception) -> str:
    """One line for a checkpoint whose weights do not fit the model that model.* asks for: the
    settings that differ from those it was trained with (dropout aside), or torch's first words."""
    from vod2chat.config import load_config, to_dict
    from vod2chat.trainer.config import Config

    saved, want = to_dict(load_config(Config, ckpt / CONFIG_FILE).model), to_dict(model_cfg)
    diff = [k for k in want if k != "dropout" and saved.get(k) != want[k]]
    what = (f"{', '.join(f'model.{k}={want[k]}' for k in diff)} but it was trained with "
            f"{', '.join(f'model.{k}={saved.get(k)}' for k in diff)}" if diff
            else " ".join(str(err).split())[:200])
    return (f"--resume: checkpoint {ckpt} does not fit this model: {what}; a resumed run keeps its model: drop "
            "the model.* overrides, or start a new train.run_dir")


def resolve(run_dir_or_ckpt: str | Path) -> Path:
    """A checkpoint directory, or a run directory's selected checkpoint (train.select)."""
    p = Path(run_dir_or_ckpt)
    if (p / META_FILE).exists() and (p / MODEL_FILE).exists():
        return p
    ckpt = selected(p)
    if ckpt is None:
        raise FileNotFoundError(f"{p} is neither a checkpoint nor a run with checkpoints (expected "
                                f"{ckpt_root(p)}/{PREFIX}*/{META_FILE}): train first, or pass --run <run_dir>")
    return ckpt


def load_run(run_dir_or_ckpt: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any, Any, dict[str, Any]]:
    """(model in eval mode on `device`, tokenizer, the run's Config, meta) of a checkpoint, or of
    a run's latest one. meta gains "checkpoint": the directory loaded."""
    from vod2chat.config import load_config, replaced
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.model import VodChatModel
    from vod2chat.trainer.tokenizer import ChatTokenizer

    ckpt = resolve(run_dir_or_ckpt)
    problems = verify(ckpt)
    if problems:
        raise CheckpointError(f"checkpoint {ckpt} is damaged: {'; '.join(problems)}")
    cfg = load_config(Config, ckpt / CONFIG_FILE)
    tok = ChatTokenizer.load(ckpt / TOKENIZER_FILE)
    cfg = replaced(cfg, {"model.vocab_size": tok.vocab_size})
    model = VodChatModel(cfg.model)
    model.load_state_dict(load_tensors(ckpt / MODEL_FILE))
    model.to(device).eval()
    return model, tok, cfg, {**read_meta(ckpt), "checkpoint": str(ckpt)}
