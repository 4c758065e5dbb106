"""Training at scale: O(1) resume from saved stream states, elastic N -> M resume, a killed
rank recovered by torchrun, a pinned selection while the store grows, verified shards and
checkpoints, a split with nothing to learn."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from store_factory import make_store
from helpers import DEBUG, REPO, VAL, cfg_for, scalars
from vod2chat.config import load_config
from vod2chat.shards.reader import ShardError
from vod2chat.shards.schema import Sample, VodRecord, sample_key
from vod2chat.shards.store import Store
from vod2chat.trainer import checkpoint, stream
from vod2chat.trainer.config import Config
from vod2chat.trainer.main import main
from vod2chat.trainer.tokenizer import ChatTokenizer


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sstore") / "store"
    make_store(d)
    return d


@pytest.fixture(scope="module")
def tok() -> ChatTokenizer:
    return ChatTokenizer.train(["red green blue loud quiet pog wow"] * 10, 300, 1)


def data_cfg(store: Path, *extra: str):
    return load_config(Config, DEBUG, [f"data.store={store}", "data.shuffle_buffer=16", VAL, *extra]).data


def reader(shards, tok, dcfg, state) -> stream.Reader:
    return stream.Reader(stream.TrainStream(shards, tok, dcfg, 4, 0, [state]), state)


def take(it, n: int) -> tuple[list[list[str]], dict]:
    keys, st = [], None
    for _ in range(n):
        b, s = next(it)
        keys.append(b["keys"])
        st = s.value
    return keys, json.loads(json.dumps(st))  # exactly what a checkpoint stores and reads back


def test_a_saved_stream_state_continues_the_stream_exactly(store_dir: Path, tok):
    dcfg = data_cfg(store_dir)
    shards = stream.pin_selection(dcfg)
    [st0] = stream.start_states(None, None, 0, 1, 0, len(shards), 0, 0)
    it = reader(shards, tok, dcfg, st0).batches()
    _, st = take(it, 7)  # mid-shard, mid-segment, a full shuffle buffer
    assert st["buffer"] and st["queue"]
    after, _ = take(it, 12)
    resumed, _ = take(reader(shards, tok, dcfg, st).batches(), 12)
    assert resumed == after
    # The benchmarks' cheap forward mode (no features, no tokens) reaches the very same state.
    spec = importlib.util.spec_from_file_location("stream_advance", REPO / "bench/stream_advance.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.advance(shards, tok, dcfg, 4, 0, st0, 7) == st


def test_worker_states_survive_prefetching(store_dir: Path, tok):
    """Two real DataLoader workers, prefetching ahead: the saved state is the one of the last
    batch the loop consumed, and the next worker in line continues after a resume."""
    dcfg = data_cfg(store_dir)
    shards = stream.pin_selection(dcfg)
    states = stream.start_states(None, None, 0, 1, 2, len(shards), 0, 0)
    batches = stream.make_train_loader(shards, tok, dcfg, 4, 0, states, 2)
    [next(batches) for _ in range(5)]  # odd: worker 1 is next
    saved = json.loads(json.dumps(batches.state()))
    assert saved["next_worker"] == 1
    after = [next(batches)["keys"] for _ in range(6)]
    lay = stream.layout(1, 2, len(shards))
    again = stream.make_train_loader(shards, tok, dcfg, 4, 0, stream.start_states([saved], lay, 0, 1, 2, len(shards), 0, 5), 2)
    assert [next(again)["keys"] for _ in range(6)] == after


def test_n_to_m_remap_keeps_pending_work_and_is_deterministic(store_dir: Path, tok):
    dcfg = data_cfg(store_dir)
    shards = stream.pin_selection(dcfg)
    old = []
    for rank in range(2):
        [st] = stream.start_states(None, None, rank, 2, 0, len(shards), 0, 0)
        _, st = take(reader(shards, tok, dcfg, st).batches(), 5)
        old.append({"next_worker": 0, "streams": [st]})
    lay = stream.layout(2, 0, len(shards))
    pending = sorted(map(tuple, old[0]["streams"][0]["buffer"] + old[1]["streams"][0]["buffer"]))
    for world in (1, 3):
        new = [s for r in range(world) for s in stream.start_states(old, lay, r, world, 0, len(shards), 0, 10)]
        assert sorted(tuple(x) for s in new for x in s["buffer"]) == pending
        assert new == [s for r in range(world) for s in stream.start_states(old, lay, r, world, 0, len(shards), 0, 10)]
        got = [take(reader(shards, tok, dcfg, s).batches(), 3)[0] for s in new]
        assert got == [take(reader(shards, tok, dcfg, s).batches(), 3)[0] for s in new]


def test_a_flipped_byte_in_a_shard_is_an_error_naming_it_or_a_recorded_skip(store_dir: Path, tmp_path: Path, tok):
    store = tmp_path / "store"
    shutil.copytree(store_dir, store)
    dcfg = data_cfg(store)
    shards = stream.pin_selection(dcfg)
    bad = store / shards[0].path
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a feature array: the tar still parses
    bad.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=rf"{shards[0].path}.*sha256"):
        for s in range(len(shards)):
            r = reader(shards, tok, dcfg, stream.fresh_state(0, 1, 0))
            r._members(s)
    dskip = data_cfg(store, "data.skip_errors=true")
    r = reader(shards, tok, dskip, stream.fresh_state(0, 1, 0))
    assert r._members(0) is None and r.skipped == [shards[0].path]
    _, st = take(r.batches(), 30)  # keeps training on the intact shards
    assert shards[0].path in st["skipped"]


def test_a_split_without_messages_stops_at_once_naming_its_vods(tmp_path: Path):
    store = Store(str(tmp_path / "store"))
    fp = {"video": {"model": "fake", "fps": 1.0}, "audio": {"model": "fake"}}
    for vod in ("5000", "5001"):
        samples = [Sample(sample_key("quiet", vod, i), np.zeros((10, 2048), np.float16), np.zeros((10, 128), np.float16),
                          {"context": [], "messages": []},
                          {"streamer": "quiet", "vod_id": vod, "segment": i, "start": 10.0 * i, "end": 10.0 * i + 10,
                           "lookback": 0.0, "video_t0": 10.0 * i, "fps": 1.0, "audio_t0": 10.0 * i, "audio_hop": 0.96,
                           "audio_win": 0.96}) for i in range(2)]
        info = store.write_shard(store.shard_rel("quiet", vod, 0), samples)
        store.commit_record(VodRecord(streamer="quiet", vod_id=vod, duration=20.0, segments=2, messages=0,
                                      fingerprints=fp, shards=[info]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # timeout: a guard against the old endless loop, not a measurement
    p = subprocess.run([sys.executable, str(REPO / "trainer/main.py"), "--config", str(DEBUG), f"data.store={store.url}",
                        f"train.run_dir={tmp_path / 'run'}", "data.val_fraction=0",
                        "data.test_fraction=0", "tokenizer.path=", "train.progress=false"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode != 0
    assert "quiet/5000, quiet/5001" in p.stderr and "hold 0 messages" in p.stderr, p.stderr[-2000:]


@pytest.mark.slow
def test_a_new_vod_between_save_and_resume_changes_nothing_unless_joined(store_dir: Path, tmp_path: Path):
    store = tmp_path / "store"
    shutil.copytree(store_dir, store)
    args = ("train.steps=16", "train.log_every=1", "train.save_every=8", "train.keep_last=5", "train.num_samples=0",
            "train.eval_every=100")
    main(cfg_for(store, tmp_path / "full", *args))
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    shutil.rmtree(part / "checkpoints/step_0000016")
    shutil.rmtree(part / "tb")
    make_store(tmp_path / "newer", vods=1, seed=7)  # VOD 1000 of another store, committed as fake/1009
    rec = Store(str(tmp_path / "newer")).read_record("fake", "1000")
    for sh in rec.shards:
        new = sh.path.replace("/1000-", "/1009-")
        shutil.copy(tmp_path / "newer" / sh.path, store / new)
        sh.path = new
    Store(str(store)).commit_record(dataclasses.replace(rec, vod_id="1009"))
    assert "1009" in {r.vod_id for r in Store(str(store)).records()}
    main(cfg_for(store, part, *args, "train.resume=true"))
    a, b = dict(scalars(tmp_path / "full")["train/loss"]), dict(scalars(part)["train/loss"])
    assert sorted(b) == list(range(9, 17))
    for step in range(9, 17):
        assert b[step] == pytest.approx(a[step], abs=1e-5), f"step {step}: resumed {b[step]} vs {a[step]}"
    sel = checkpoint.read_meta(part / "checkpoints/step_0000016")["selection"]
    assert sel["changes"] == [] and sel["vods"] == 3
    # Asked for: the new VOD joins at the resume step, and meta.json says so.
    joined = tmp_path / "joined"
    shutil.copytree(tmp_path / "full", joined)
    shutil.rmtree(joined / "checkpoints/step_0000016")
    main(cfg_for(store, joined, *args, "train.resume=true", "data.join_new_vods=true"))
    sel = checkpoint.read_meta(joined / "checkpoints/step_0000016")["selection"]
    assert sel["vods"] == 4 and sel["changes"] == [{"step": 8, "event": "joined", "shards": 3, "vods": ["fake/1009"]}]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_truncated_checkpoint_falls_back_to_the_newest_intact_one(store_dir: Path, tmp_path: Path, caplog):
    run = tmp_path / "run"
    args = ("train.steps=12", "train.log_every=1", "train.save_every=6", "train.keep_last=5", "train.num_samples=0")
    main(cfg_for(store_dir, run, *args))
    model = run / "checkpoints/step_0000012/model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    shutil.rmtree(run / "tb")
    with caplog.at_level(logging.WARNING, logger="vod2chat.trainer.checkpoint"):
        main(cfg_for(store_dir, run, *args, "train.steps=14", "train.resume=true"))
    assert any("step_0000012/model.pt" in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)
    assert sorted(dict(scalars(run)["train/loss"])) == list(range(7, 15))  # resumed from step 6
    # eval/generate on a damaged checkpoint name the file
    model = run / "checkpoints/step_0000014/model.pt"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match=r"step_0000014/model\.pt"):
        checkpoint.load_run(run)


def torchrun(nproc: int, port: int, script: Path, *args: str, env: dict | None = None, restarts: int = 0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port)]
    if restarts:
        cmd += ["--max-restarts", str(restarts)]
    subprocess.run(cmd + [str(script), *args], check=True, env=env, timeout=600, cwd=REPO)


def run_args(store: Path, run: Path, *extra: str) -> list[str]:
    return ["--config", str(DEBUG), f"data.store={store}", f"train.run_dir={run}", "train.progress=false",
            "train.num_samples=0", "train.log_every=1", "train.keep_last=5", VAL, *extra]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_elastic_resume_two_processes_to_one_and_one_to_two(store_dir: Path, tmp_path: Path):
    two = tmp_path / "two"
    torchrun(2, 29531, REPO / "trainer/main.py", *run_args(store_dir, two, "train.steps=6", "train.save_every=6"))
    losses = []
    for name in ("a", "b"):  # 2 -> 1, twice: the same (checkpoint, M) gives the same run
        run = tmp_path / name
        shutil.copytree(two, run, ignore=shutil.ignore_patterns("tb"))
        main(cfg_for(store_dir, run, "train.steps=10", "train.log_every=1", "train.num_samples=0", "train.resume=true"))
        losses.append(dict(scalars(run)["train/loss"]))
        meta = checkpoint.read_meta(run / "checkpoints/step_0000010")
        assert meta["world_size"] == 1 and meta["grad_accum"] == 2  # global batch 8 = 1 x 4 x 2
    assert sorted(losses[0]) == list(range(7, 11)) and losses[0] == losses[1]
    assert all(np.isfinite(v) for v in losses[0].values())
    one = tmp_path / "one"  # 1 -> 2
    main(cfg_for(store_dir, one, "train.steps=6", "train.save_every=6", "train.num_samples=0"))
    shutil.rmtree(one / "tb")
    torchrun(2, 29532, REPO / "trainer/main.py", *run_args(store_dir, one, "train.steps=10", "train.resume=true"))
    assert sorted(dict(scalars(one)["train/loss"])) == list(range(7, 11))
    meta = checkpoint.read_meta(one / "checkpoints/step_0000010")
    assert meta["world_size"] == 2 and meta["data"]["layout"]["world_size"] == 2


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_killed_rank_is_brought_back_by_torchrun_from_the_checkpoint(store_dir: Path, tmp_path: Path):
    run, log = tmp_path / "run", tmp_path / "losses.jsonl"
    torchrun(2, 29533, REPO / "tests/kill_rank.py", *run_args(store_dir, run, "train.steps=14", "train.save_every=6"),
             env={"KILL_AFTER_STEP": "9", "LOSS_LOG": str(log)}, restarts=1)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    first = {(r["rank"], r["step"]): r["loss"] for r in rows if r["attempt"] == 0}
    second = {(r["rank"], r["step"]): r["loss"] for r in rows if r["attempt"] == 1}
    assert max(s for _, s in first) == 9  # rank 1 died after step 9, before the run's end
    assert sorted({s for _, s in second}) == list(range(7, 15))  # back from the step-6 checkpoint, on to the end
    common = sorted(set(first) & set(second))
    assert len(common) >= 3  # steps 7..9 at least on rank 1
    for key in common:
        assert second[key] == pytest.approx(first[key], abs=1e-5), f"rank/step {key}: {second[key]} vs {first[key]}"
    assert checkpoint.read_meta(run / "checkpoints/step_0000014")["world_size"] == 2


def test_fast_examples_and_collate_equal_the_per_message_definition(store_dir: Path, tok):
    """The segment-at-once path (one searchsorted, texts tokenized once, block collate) builds
    exactly what av_window + build_tokens define per message."""
    import torch

    from vod2chat.shards.reader import read_store
    from vod2chat.trainer.data import av_window, build_tokens, collate, sample_examples

    dcfg = data_cfg(store_dir, "data.context_messages=3", "data.max_context_tokens=12", "data.max_message_tokens=3")
    samples = list(read_store(str(store_dir), shuffle_shards=False))[:6]
    examples = [e for s in samples for e in sample_examples(s, tok, dcfg)]
    assert len(examples) == sum(len(s.chat["messages"]) for s in samples)
    for s in samples:
        history = [m["text"] for m in s.chat["context"]]
        for i, (m, e) in enumerate(zip(s.chat["messages"], sample_examples(s, tok, dcfg))):
            v, vt, a, at = av_window(s, float(m["t"]), dcfg.window_s)
            ctx = history[-dcfg.context_messages:]
            tokens, n_prefix = build_tokens(ctx, m["text"], tok, dcfg)
            np.testing.assert_array_equal(np.asarray(e.video), v)
            np.testing.assert_array_equal(e.video_time, vt)
            np.testing.assert_array_equal(np.asarray(e.audio), a)
            np.testing.assert_array_equal(e.audio_time, at)
            assert (e.tokens, e.n_prefix, e.context, e.key) == (tokens, n_prefix, ctx, f"{s.key}/{i}")
            history.append(m["text"])
    b = collate(examples, tok.pad_id)
    for j, e in enumerate(examples):
        n, nv, na = len(e.tokens), len(e.video), len(e.audio)
        assert b["tokens"][j, :n].tolist() == e.tokens and (b["tokens"][j, n:] == tok.pad_id).all()
        assert b["loss_mask"][j].nonzero().flatten().tolist() == list(range(e.n_prefix - 1, n - 1))
        assert torch.equal(b["video"][j, :nv].float(), torch.as_tensor(np.asarray(e.video, np.float32)))
        assert b["video_mask"][j].sum() == nv and b["audio_mask"][j].sum() == na
        assert (b["video"][j, nv:] == 0).all() and torch.equal(b["audio_time"][j, :na], torch.from_numpy(e.audio_time))


def test_pinned_shards_are_typed_records_and_selection_json_is_unchanged(tmp_path: Path):
    """selection.json keeps its format (a list of plain objects with the PIN_KEYS); reading it back
    checks each field's type and the path, naming the file."""
    from vod2chat.trainer import checkpoint

    sh = {"path": "shards/s/1-00000.tar", "sha256": "ab" * 32, "bytes": 10, "samples": 2, "messages": 3,
          "streamer": "s", "vod_id": "1"}
    (tmp_path / checkpoint.SELECTION_FILE).write_text(json.dumps({"store": "x", "shards": [sh]}))
    [pinned] = checkpoint.load_pinned(tmp_path)
    assert isinstance(pinned, stream.PinnedShard) and pinned.to_json() == sh
    for bad in ({**sh, "bytes": "10"}, {**sh, "messages": None}, {**sh, "path": "../../etc/x.tar"}):
        (tmp_path / checkpoint.SELECTION_FILE).write_text(json.dumps({"store": "x", "shards": [bad]}))
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / checkpoint.SELECTION_FILE))):
            checkpoint.load_pinned(tmp_path)
