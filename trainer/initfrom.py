"""`train.init_from`: a new run that starts from a trained run's weights and tokenizer.

Not a resume: the optimizer, the LR schedule and the step start afresh in the new run's own
directory. The starting run's vocabulary grows, it is never retrained (tokenizer.grow_for): every
existing id keeps its meaning, new streamers get `<streamer:NAME>` tokens, and whole words of the
new streamers' chat that the old BPE cuts badly may become tokens. New embedding rows (the output
head is tied to them) start where the old model already is: a streamer token at the mean of the
existing streamer tokens, a word at the mean of the old pieces it replaces; so before any step the
logits of every old token on every old input are those of the starting run.

The starting run is untrusted input (a shared disk, a bucket): its checkpoint must lie inside it
(no symlink out), its files must match the sizes and sha256 its meta.json lists, tensors are
read with weights_only=True, and anything unreadable is one error naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vod2chat.config import load_config
from vod2chat.shards.store import fingerprint_diff
from vod2chat.trainer import checkpoint
from vod2chat.trainer.checkpoint import CONFIG_FILE, META_FILE, MODEL_FILE, TOKENIZER_FILE
from vod2chat.trainer.config import Config
from vod2chat.trainer.data import RunSplits, iter_texts, split_streamers
from vod2chat.trainer.model import ModelConfig, VodChatModel
from vod2chat.trainer.tokenizer import ChatTokenizer, grow_for

log = logging.getLogger(__name__)
FILES = (META_FILE, CONFIG_FILE, TOKENIZER_FILE, MODEL_FILE)
ORIGIN_FILE = "init_from.json"  # in the new run's directory: where it came from, for its meta.json


@dataclass
class Source:
    """A verified checkpoint of the starting run."""
    run: Path
    ckpt: Path
    meta: dict[str, Any]
    cfg: Config
    tok: ChatTokenizer
    sha256: str  # of model.pt


def _inside(path: Path, root: Path, what: str) -> Path:
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise checkpoint.CheckpointError(f"train.init_from: {path} leads outside {root} (to {real}): refused; "
                                         f"pass the run directory that holds its checkpoints ({what})")
    return real


def open_source(path: str | Path) -> Source:
    """The newest checkpoint of run `path` (or the checkpoint `path`), checked file by file."""
    run = Path(path)
    if not run.is_dir():
        raise FileNotFoundError(f"train.init_from={path}: no such run directory; pass a trained run "
                                "(or one of its checkpoints/step_* directories)")
    ckpt = _inside(checkpoint.resolve(run), run, "checkpoint")
    for name in FILES:
        f = ckpt / name
        if not f.is_file():
            raise checkpoint.CheckpointError(f"train.init_from: {f} is missing; the checkpoint is incomplete: "
                                             "pass another checkpoint of the run")
        _inside(f, ckpt, name)
    problems = checkpoint.verify(ckpt)
    if problems:
        raise checkpoint.CheckpointError(f"train.init_from: checkpoint {ckpt} is damaged: {'; '.join(problems)}")
    meta = checkpoint.read_meta(ckpt)
    try:
        cfg = load_config(Config, ckpt / CONFIG_FILE)
    except Exception as e:  # noqa: BLE001 - any parse or type error: one line naming the file
        raise checkpoint.CheckpointError(f"train.init_from: {ckpt / CONFIG_FILE} is not a training config "
                                         f"({str(e)[:200]})") from e
    try:
        tok = ChatTokenizer.load(ckpt / TOKENIZER_FILE)
    except ValueError as e:  # not JSON, not a tokenizer, or special tokens moved: its own one line
        raise checkpoint.CheckpointError(f"train.init_from: {str(e)[:300]}; the starting run's tokenizer is "
                                         "unusable: pass another checkpoint of the run") from e
    listed = (meta.get("files") or {}).get(MODEL_FILE) or {}
    sha = listed.get("sha256") or checkpoint.file_digest(ckpt / MODEL_FILE)["sha256"]
    return Source(run.resolve(), ckpt, meta, cfg, tok, sha)


def check_fingerprints(src: Source, store_fps: dict[str, Any] | None, store: str) -> None:
    """The starting run's features and the store's must come from the same encoders: one line naming both."""
    have = src.meta.get("fingerprints")
    if have is None or store_fps is None or have == store_fps:
        return
    diff, _ = fingerprint_diff(store_fps, have, f"in store {store}", f"in run {src.run}")
    raise ValueError(f"train.init_from: run {src.run} was trained on features of other encoders than store {store} "
                     f"holds ({diff}): ingest the new VODs with the run's encoders (same weights and settings), or "
                     "train from scratch")


def old_streamers(src: Source) -> set[str]:
    """The streamers the starting run trained on: its meta.json's list, else its streamer tokens."""
    listed = src.meta.get("streamers")
    if isinstance(listed, list) and all(isinstance(s, str) for s in listed):
        return set(listed)
    return set(src.tok.streamers())


def grow_tokenizer(cfg: Config, src: Source, out: Path, splits: RunSplits) -> dict[str, Any]:
    """The starting run's tokenizer grown for this run's train split (saved to `out`): what was
    added, as recorded in meta.json."""
    known = old_streamers(src)
    new = [s for s in split_streamers(cfg.data, "train", splits) if s not in known]
    texts: list[str] = []
    if new or not known:  # no record of the old streamers: all of this run's chat is "new"
        view = splits.narrowed(new) if new else splits
        texts = list(iter_texts(view.cfg, "train", view))
    tc = cfg.tokenizer
    tok, growth = grow_for(src.tok, new if cfg.data.streamer_token else [], texts, tc.grow_min_count,
                           tc.grow_max_tokens, tc.grow_min_gain)
    tok.save(out)
    record = {"old_vocab": src.tok.vocab_size, "vocab": tok.vocab_size, "new_streamers": new,
              "streamer_tokens": growth.streamers, "words": growth.words,
              "tokens_per_message_new_chat": growth.tokens_per_message}
    log.info("init_from %s (step %s): %d streamer token(s) %s, %d word token(s); new chat %.2f -> %.2f tokens per "
             "message", src.ckpt, src.meta["step"], len(growth.streamers), growth.streamers, len(growth.words),
             growth.tokens_per_message["before"], growth.tokens_per_message["kept"])
    return record


def new_row_sources(old: ChatTokenizer, new: ChatTokenizer) -> dict[int, list[int]]:
    """Per new id, the old ids whose embeddings it starts at the mean of: a streamer token, the old
    streamer tokens (all old tokens if there are none); a word, the old pieces it joins."""
    streamer_ids = [old.streamer_id(s) for s in old.streamers()]
    new_streamer_ids = {new.streamer_id(s) for s in new.streamers()} - set(streamer_ids)
    return {i: (streamer_ids or list(range(old.vocab_size))) if i in new_streamer_ids else old.pieces(new.id_to_token(i))
            for i in range(old.vocab_size, new.vocab_size)}


def grow_model(model: VodChatModel, old: ChatTokenizer, new: ChatTokenizer) -> VodChatModel:
    """`model` (old vocabulary) with embedding/output rows for the new tokens; everything else as it was."""
    state = model.state_dict()
    emb = state["tok_emb.weight"]
    rows = [emb[ids].float().mean(0).to(emb.dtype) for _, ids in sorted(new_row_sources(old, new).items())]
    grown = torch.cat([emb, torch.stack(rows)]) if rows else emb
    state["tok_emb.weight"] = state["head.weight"] = grown  # tied: one tensor, both names in the state dict
    out = VodChatModel(dataclasses.replace(model.config, vocab_size=new.vocab_size))
    out.load_state_dict(state)
    return out


def load_model(src: Source, model_cfg: ModelConfig) -> VodChatModel:
    """The starting run's model, at its own vocabulary."""
    model = VodChatModel(dataclasses.replace(model_cfg, vocab_size=src.tok.vocab_size))
    path = src.ckpt / MODEL_FILE
    try:
        model.load_state_dict(checkpoint.load_tensors(path))
    except RuntimeError as e:  # shapes or names that do not fit its own config.toml
        raise checkpoint.CheckpointError(f"train.init_from: {path} does not fit the model in "
                                         f"{src.ckpt / CONFIG_FILE}: {str(e)[:200]}") from e
    return model


def prepare(cfg: Config, run_dir: Path, is_main: bool, splits: RunSplits) -> tuple[Config, Source]:
    """Every rank: open and check the starting run; the run's config with the starting run's model
    settings (the weights fit only them) and streamer tokens; the main process writes the grown
    tokenizer and the run's origin to run_dir."""
    if cfg.tokenizer.path:
        raise ValueError(f"train.init_from and tokenizer.path={cfg.tokenizer.path} are both set: a run started "
                         "from another grows that run's tokenizer; leave tokenizer.path empty")
    src = open_source(cfg.train.init_from)
    check_fingerprints(src, splits.fingerprints(), cfg.data.store)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(src.cfg.model), data=dataclasses.replace(
        cfg.data, streamer_token=cfg.data.streamer_token or src.cfg.data.streamer_token))
    if is_main:
        record = grow_tokenizer(cfg, src, run_dir / TOKENIZER_FILE, splits)
        (run_dir / ORIGIN_FILE).write_text(json.dumps(origin(src, record), indent=1))
    return cfg, src


def origin(src: Source, growth: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where a run came from, for its meta.json."""
    return {"run": str(src.run), "checkpoint": str(src.ckpt), "step": int(src.meta["step"]),
            "model_sha256": src.sha256, **({"tokenizer": growth} if growth else {})}


def start_model(src: Source, cfg: Config, tok: ChatTokenizer) -> VodChatModel:
    """The new run's model before its first step: the starting run's, grown to `tok`."""
    return grow_model(load_model(src, cfg.model), src.tok, tok)
