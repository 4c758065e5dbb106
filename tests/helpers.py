"""Helpers several test modules share (fixtures are in conftest.py): configs for tiny runs and
ingests, TensorBoard scalars, and `vod2chat live` in a subprocess with a stream written meanwhile."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vod2chat.config import load_config
from vod2chat.ingest.config import DecodeConfig, EncoderConfig, IngestConfig
from vod2chat.shards.store import Store
from vod2chat.trainer.config import Config

if TYPE_CHECKING:
    from vod2chat.synth.scenes import Stream

REPO = Path(__file__).resolve().parents[1]
DEBUG = REPO / "launch/debug.toml"
VAL = 'data.val_vods=["1003"]'  # the factory store has VODs 1000-1003
RATE = 150.0  # live: messages per minute, enough to count reactions on short streams


def random_encoders(**kw) -> EncoderConfig:
    """Random-initialised encoders (what the *_debug.toml configs use)."""
    return EncoderConfig(**{"video_weights": "random", "audio_weights": "random", **kw})


def ingest_config(**kw) -> IngestConfig:
    """An IngestConfig from flat keywords: encoder and decoding keys go into their sections."""
    enc = {f.name: kw.pop(f.name) for f in dataclasses.fields(EncoderConfig) if f.name in kw}
    dec = {f.name: kw.pop(f.name) for f in dataclasses.fields(DecodeConfig) if f.name in kw}
    return IngestConfig(**kw, encoders=EncoderConfig(**enc), decode=DecodeConfig(**dec))


def debug_cfg(store: Path, **kw) -> IngestConfig:
    base = dict(store=str(store), streamer="test", segment_s=10.0, lookback_s=5.0, fps=1.0, segments_per_shard=2,
                video_weights="random", audio_weights="random", device="cpu", precision="fp32", video_batch=16,
                progress=False)
    return ingest_config(**{**base, **kw})


def cfg_for(store: Path, run: Path, *extra: str) -> Config:
    return load_config(Config, DEBUG, [f"data.store={store}", f"train.run_dir={run}", "train.progress=false", VAL, *extra])


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def live_cmd(run: Path, source: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vod2chat.launch.cli", "live", "--run", str(run), "--source", source,
            "--weights", "random", "--device", "cpu", "--rate", str(RATE), "--temperature", "0.7", *extra]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Lines:
    """A process's stdout lines, each with the wall time it arrived."""

    def __init__(self, proc: subprocess.Popen):
        self.items: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, f) -> None:
        for line in f:
            self.items.append((time.time(), line))

    def wait(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.items) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def messages(self) -> list[dict]:
        return [json.loads(line) for _, line in self.items]


def start(cmd: list[str], stdin=None) -> tuple[subprocess.Popen, Lines]:
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=env())
    return proc, Lines(proc)


def wait_ready(proc: subprocess.Popen, out: Path, timeout: float = 180.0) -> None:
    """--out is opened once the model and encoders are loaded: a stream written from then on is
    followed from its first second (a loaded machine can take long to load them)."""
    deadline = time.monotonic() + timeout
    while not out.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "live never got ready"
        time.sleep(0.1)


def finish(proc: subprocess.Popen, lines: Lines, timeout: float) -> str:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    lines.thread.join(5)
    return proc.stderr.read()


def writer(stream: Stream, sink, **kw) -> tuple[threading.Thread, dict]:
    from vod2chat.synth.scenes import write_live

    box: dict = {}

    def run() -> None:
        box["t0"] = time.time()  # about when stream t = 0 is written (write_live returns it exactly)
        box["t0"] = write_live(stream, sink, **kw)
        box["end"] = time.time()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, box


def ingest_folder(d: Path, streamer: str) -> Path:
    """Ingest the videos and chat logs in d/vods (one process, no Ray, random-initialised encoders)
    into d/store; returns the store."""
    from vod2chat.config import load_config
    from vod2chat.ingest.config import IngestConfig
    from vod2chat.ingest.features import ingest_encoders
    from vod2chat.ingest.worker import ingest_vod
    from vod2chat.shards.store import Store

    cfg = load_config(IngestConfig, REPO / "launch/ingest_debug.toml",
                      [f"store={d / 'store'}", f"streamer={streamer}", "progress=false"])
    enc, store = ingest_encoders(cfg), Store(cfg.store)
    for job in pair_inputs([str(d / "vods")], streamer):
        assert ingest_vod(job, store, enc, cfg).status == "done"
    return d / "store"


def pair_inputs(inputs: list[str], streamer: str) -> list:
    """ingest.worker.find_pairs, all or nothing (what a test's own inputs must do): any file that
    does not pair is an error naming every such file. `vod2chat ingest` itself goes on with the pairs."""
    from vod2chat.ingest.worker import find_pairs

    pairing = find_pairs(inputs, streamer)
    if pairing.problems:
        raise ValueError(f"cannot pair inputs ({len(pairing.problems)} problem(s)): " + " | ".join(pairing.problems))
    return pairing.jobs


# -- shards rewritten as a buggy writer or an attacker would (test_hostile_features, test_train_hardening) --
def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def rewrite_shard(store: Path, rel: str, edit) -> None:
    """Rewrite a committed shard with `edit(member name, bytes) -> bytes` applied, and reseal its
    VOD record with the new size and sha256, as a writer with a bug or an attacker on a shared
    bucket would: the record's checksums then vouch for the bad shard."""
    src = store / rel
    out = io.BytesIO()
    with tarfile.open(src) as tin, tarfile.open(fileobj=out, mode="w") as tout:
        for m in tin.getmembers():
            data = edit(m.name, tin.extractfile(m).read())
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    src.write_bytes(out.getvalue())
    reseal(store, rel)


def reseal(store: Path, rel: str) -> None:
    data = (store / rel).read_bytes()
    s = Store(str(store))
    for rec in s.records():
        for sh in rec.shards:
            if sh.path == rel:
                sh.bytes, sh.sha256 = len(data), hashlib.sha256(data).hexdigest()
                s.commit_record(rec)
                return
    raise AssertionError(rel)


def nan_video(name: str, data: bytes) -> bytes:
    if name.endswith(".video.npy"):
        a = np.load(io.BytesIO(data))
        return npy(np.full_like(a, np.nan))
    return data


def random_encoder_fingerprints() -> dict:
    """The fingerprints of random-initialised encoders, as a store ingested with them records."""
    from vod2chat.ingest.features import ingest_encoders

    return json.loads(json.dumps(ingest_encoders(ingest_config(video_weights="random", audio_weights="random",
                                                               device="cpu")).fingerprints()))


def set_fingerprints(store: Path, fps: dict) -> None:
    """Every record of a factory store claims features of `fps` (so generate accepts its runs)."""
    for p in (store / "vods").rglob("*.json"):
        rec = json.loads(p.read_text())
        rec["fingerprints"] = fps
        p.write_text(json.dumps(rec))


# -- decoding ------------------------------------------------------------------------------
def recompute_decode(model, prefix: list[int], memory, memory_mask, eos_id: int, sc) -> list[int]:
    """What trainer.sampling.generate must give for one row, computed the slow way it replaces:
    the row alone, the whole sequence re-decoded from scratch for every new token (no cache)."""
    import torch

    from vod2chat.trainer.sampling import pick

    seq, new = list(prefix), []
    seen = torch.zeros(1, model.config.vocab_size, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(sc.max_new_tokens):
            logits = model.decode(torch.tensor([seq]), memory, memory_mask, None)[0][:, -1]
            nxt = int(pick(logits, seen, sc, None)[0])
            if nxt == eos_id:
                break
            seq.append(nxt)
            new.append(nxt)
            seen[0, nxt] = True
    return new
