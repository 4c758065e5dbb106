"""The trainer against hostile data and careless settings (issue 18): non-finite features joining
a good run, diverging steps, damaged checkpoints and pruning, a full disk, --resume into nothing,
what a run prints, TensorBoard listing a run once."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from store_factory import make_store
from helpers import DEBUG, cfg_for, nan_video, npy, rewrite_shard, scalars
from vod2chat.shards.store import Store
from vod2chat.trainer import checkpoint
from vod2chat.trainer.main import main
from vod2chat.trainer.steps import TrainingDiverged


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hstore") / "store"
    make_store(d)
    return d


def digests(run: Path) -> dict[str, dict]:
    return {c.name: {f.name: checkpoint.file_digest(f) for f in c.iterdir()} for c in checkpoint.list_checkpoints(run)}


def all_finite(ckpt: Path) -> bool:
    return not checkpoint.non_finite(checkpoint.load_tensors(ckpt / "model.pt"))


def add_nan_vod(store: Path) -> list[str]:
    """VOD fake/1009 committed with every video.npy all NaN and its record resealed: what a writer
    with a bug or an attacker on a shared bucket leaves."""
    make_store(store.parent / "other", vods=1, seed=7)
    rec = Store(str(store.parent / "other")).read_record("fake", "1000")
    for sh in rec.shards:
        new = sh.path.replace("/1000-", "/1009-")
        shutil.copy(store.parent / "other" / sh.path, store / new)
        sh.path = new
    Store(str(store)).commit_record(dataclasses.replace(rec, vod_id="1009"))
    for sh in rec.shards:
        rewrite_shard(store, sh.path, nan_video)
    return [sh.path for sh in rec.shards]


GOOD = ("train.steps=8", "train.save_every=4", "train.keep_last=2", "train.log_every=1", "train.num_samples=0",
        "train.eval_every=100")


def test_a_nan_vod_joining_at_resume_never_destroys_the_good_checkpoints(store_dir: Path, tmp_path: Path):
    """The issue's scenario: a good run with checkpoints; a VOD whose video.npy is all NaN (record
    resealed) joins at --resume data.join_new_vods=true."""
    store = tmp_path / "store"
    shutil.copytree(store_dir, store)
    run = tmp_path / "run"
    main(cfg_for(store, run, *GOOD))
    good = digests(run)
    assert sorted(good) == ["step_0000004", "step_0000008"]
    bad_shards = add_nan_vod(store)
    resume = (*GOOD, "train.steps=16", "train.resume=true", "data.join_new_vods=true")
    # The default policy: the run stops naming the shard and the member, before any step on it.
    with pytest.raises(ValueError, match=r"shard shards/fake/1009-0000\d\.tar: .*video\.npy holds \d+ NaN/Inf values"):
        main(cfg_for(store, run, *resume))
    assert digests(run) == good  # every good checkpoint survives, byte for byte
    # data.skip_errors=true: the NaN samples are skipped and recorded, training goes on finite.
    main(cfg_for(store, run, *resume, "data.skip_errors=true"))
    last = run / "checkpoints/step_0000016"
    skipped = checkpoint.read_meta(last)["data"]["skipped_shards"]
    assert skipped and all(any(s.startswith(p + "#fake__") for p in bad_shards) for s in skipped), skipped
    assert "fake/1009" in checkpoint.read_meta(last)["selection"]["changes"][0]["vods"]
    losses = dict(scalars(run)["train/loss"])
    assert all(torch.isfinite(torch.tensor(losses[s])) for s in range(9, 17))
    assert all(all_finite(c) for c in checkpoint.list_checkpoints(run))


def test_non_finite_steps_are_skipped_counted_and_stop_the_run_before_saving(store_dir: Path, tmp_path: Path,
                                                                              caplog):
    """A learning rate that blows the weights up (finite, 1e30) gives NaN losses: each such step
    leaves the weights alone and is counted; max_bad_steps in a row stop the run unsaved."""
    blowup = ("train.lr=1e30", "train.warmup_steps=0", "train.log_every=1", "train.num_samples=0",
              "train.eval_every=100")
    run = tmp_path / "counted"
    out = main(cfg_for(store_dir, run, *blowup, "train.steps=6", "train.max_bad_steps=100"))
    skipped = dict(scalars(run)["train/skipped_steps"])
    assert skipped[6] == out["train/skipped_steps"] >= 4 and skipped[6] == sum(
        1 for _, v in scalars(run)["train/loss"] if v != v)  # every NaN loss was a skipped step
    run = tmp_path / "stopped"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vod2chat.trainer.steps"):
        with pytest.raises(TrainingDiverged, match=r"stopped at step \d+: 3 steps in a row had a non-finite loss or "
                                                   r"gradient \(train.max_bad_steps=3\); nothing was saved"):
            main(cfg_for(store_dir, run, *blowup, "train.steps=20", "train.save_every=10", "train.max_bad_steps=3"))
    assert sum("skipped: non-finite loss or gradient" in r.getMessage() for r in caplog.records) == 3
    assert checkpoint.list_checkpoints(run) == []


def tiny_state(tmp_path: Path, weight: float = 1.0, n: int = 4):
    from vod2chat.trainer.config import Config

    model = torch.nn.Linear(n, n)
    with torch.no_grad():
        model.weight.fill_(weight)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    tok = tmp_path / "tok.json"
    tok.write_text("{}")
    return model, opt, sched, Config(), tok


def publish(run: Path, step: int, state, keep_last: int = 3) -> Path:
    model, opt, sched, cfg, tok = state
    return checkpoint.publish(checkpoint.staging_dir(run, step), step, model, opt, sched, cfg, {}, tok, keep_last)


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path: Path):
    run = tmp_path / "run"
    publish(run, 1, tiny_state(tmp_path))
    before = digests(run)
    with pytest.raises(checkpoint.CheckpointError, match=r"not writing checkpoint step 2: 1 tensors hold NaN/Inf "
                                                         r"\(weight\); the checkpoints in .* are kept"):
        publish(run, 2, tiny_state(tmp_path, weight=float("nan")), keep_last=1)
    assert digests(run) == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000001"]  # no .tmp left


def test_pruning_sets_a_damaged_checkpoint_aside_and_keeps_the_newest_intact(store_dir: Path, tmp_path: Path,
                                                                             capsys, caplog):
    """The issue's case: flip a byte in the newest checkpoint's model.pt, resume with
    train.keep_last=1 train.save_every=2."""
    run = tmp_path / "run"
    args = ("train.steps=6", "train.save_every=3", "train.keep_last=3", "train.num_samples=0", "train.eval_every=100")
    main(cfg_for(store_dir, run, *args))
    model = run / "checkpoints/step_0000006/model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="vod2chat.trainer.checkpoint"):
        main(cfg_for(store_dir, run, *args, "train.steps=5", "train.keep_last=1", "train.save_every=2",
                     "train.resume=true"))
    assert f"resuming from step 3 (checkpoint {run / 'checkpoints/step_0000003'})" in capsys.readouterr().out
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step_0000005", "step_0000006.damaged"], names
    assert any("step_0000006 is damaged" in r.getMessage() and "set aside as step_0000006.damaged" in r.getMessage()
               for r in caplog.records)
    assert checkpoint.verify(run / "checkpoints/step_0000005") == []
    # the next resume finds the intact one
    main(cfg_for(store_dir, run, *args, "train.steps=6", "train.keep_last=1", "train.resume=true"))
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["step_0000006"]


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 1 MiB tmpfs (root only): the disk a checkpoint does not fit on."""
    d = tmp_path / "tiny"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a 1 MiB tmpfs")
    yield d
    if subprocess.run(["umount", str(d)]).returncode:
        subprocess.run(["umount", "-l", str(d)], check=True)  # a writer that failed may still hold a file open


def test_a_full_disk_during_save_is_one_error_and_leaves_no_tmp(tiny_disk: Path, tmp_path: Path):
    run = tiny_disk / "run"
    publish(run, 1, tiny_state(tmp_path))
    before = digests(run)
    big = tiny_state(tmp_path, n=512)  # 1 MiB of weights, 3 with AdamW's moments once stepped
    big[0](torch.ones(2, 512)).sum().backward()
    big[1].step()
    with pytest.raises(checkpoint.DiskFullError) as e:
        publish(run, 2, big)
    assert str(e.value).startswith(f"disk full at {run / 'checkpoints'}: checkpoint step 2 was not written")
    assert e.value.errno == errno.ENOSPC and "\n" not in str(e.value) and "enforce" not in str(e.value)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000001"]
    assert digests(run) == before


def test_resume_without_a_checkpoint_is_an_error_naming_the_folder(store_dir: Path, tmp_path: Path, capsys):
    from vod2chat.launch.cli import main as cli

    run = tmp_path / "runs" / f"nonexistent-{uuid.uuid4().hex[:6]}"
    rc = cli(["train", "--config", str(DEBUG), "--store", str(store_dir), "--train.run-dir", str(run), "--resume",
              'data.val_vods=["1003"]', "train.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"vod2chat train: error: --resume: {run} does not exist: check train.run_dir, or drop "
                               "--resume to start a new run there  (--debug shows the traceback)"]
    assert not run.exists()
    run.mkdir(parents=True)  # a folder without checkpoints: the same
    with pytest.raises(ValueError, match=rf"--resume: {run} holds no checkpoint"):
        main(cfg_for(store_dir, run, "train.resume=true"))


def files_of(run: Path) -> dict[str, str]:
    return {str(f.relative_to(run)): checkpoint.file_digest(f) for f in sorted(run.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("override, error", [
    ('data.val_vods=["9999"]', "has no VOD in split 'val'"),  # found when the loaders are built
    ("model.d_model=32", "model.d_model=32 but it was trained with model.d_model=64"),  # found loading the weights
])
def test_a_resume_that_fails_leaves_the_run_as_it_was(store_dir: Path, tmp_path: Path, capsys, override: str,
                                                      error: str):
    """`train --resume` with an override the run cannot take fails before it writes anything into
    the run: config.toml (what `--config` reruns and eval reads) stays byte for byte the run's."""
    from vod2chat.launch.cli import main as cli

    run = tmp_path / "run"
    base = ["train", "--config", str(DEBUG), "--store", str(store_dir), "--train.run-dir", str(run),
            'data.val_vods=["1003"]', "train.progress=false", "train.steps=4", "train.save_every=4",
            "train.eval_every=4", "train.num_samples=0"]
    assert cli(base) == 0
    before = files_of(run)
    capsys.readouterr()
    assert cli([*base, "--resume", "train.steps=8", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and error in err[0], err
    assert files_of(run) == before
    # A resume that holds writes the config it continues with.
    assert cli([*base, "--resume", "train.steps=6"]) == 0
    assert "steps = 6" in (run / "config.toml").read_text()


def test_a_run_prints_its_summary_warns_about_silent_vods_and_lists_once_in_tensorboard(store_dir: Path,
                                                                                        tmp_path: Path, capsys,
                                                                                        caplog):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    store = tmp_path / "store"
    shutil.copytree(store_dir, store)
    rec = Store(str(store)).read_record("fake", "1002")
    for sh in rec.shards:  # fake/1002 keeps its chat only as a count of 0: a VOD that teaches nothing
        sh.messages = 0
    Store(str(store)).commit_record(dataclasses.replace(rec, messages=0))
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="vod2chat.trainer.report"):
        out = main(cfg_for(store, run, "train.steps=4", "train.eval_every=4", "train.num_samples=0"))
    text = capsys.readouterr().out
    params = sum(p.numel() for p in checkpoint.load_run(run)[0].parameters())
    assert f"{params / 1e6:.2f} M parameters" in text
    assert "train: 3 VODs, 48 messages: fake/1000 (24), fake/1001 (24), fake/1002 (0)" in text
    assert "val:   1 VOD, 24 messages: fake/1003 (24)" in text and "test:  0 VODs, 0 messages" in text
    assert "precision fp32 (train.mixed_precision=no)" in text and "torch threads" in text and "CPU " in text
    assert any("1 training VOD(s) hold 0 messages" in r.getMessage() and "fake/1002" in r.getMessage()
               for r in caplog.records)
    assert (f"done at step 4: final validation loss {out['val/loss']:.4f} (perplexity {out['val/ppl']:.2f}; "
            f"A/V shuffled {out['val/loss_av_shuffled']:.4f}); checkpoint {run / 'checkpoints/step_0000004'}") in text
    # TensorBoard: one run (the run's own folder), holding the scalars and the hparams.
    mux = EventMultiplexer().AddRunsFromDirectory(str(run / "tb"))
    mux.Reload()
    assert list(mux.Runs()) == ["."], mux.Runs()
    tags = mux.Runs()["."]
    assert "train/loss" in tags["scalars"], tags
    hparams = mux.PluginRunToTagToContent("hparams")
    assert list(hparams) == ["."] and "_hparams_/experiment" in hparams["."], hparams


@pytest.mark.parametrize("bad, message", [
    (lambda a: a.astype("int8"), r"video\.npy is int8"),
    (lambda a: a[:0], r"video\.npy has 0 rows"),
    (lambda a: a[:, :1024], r"video\.npy has shape \[\d+, 1024\]"),
])
def test_features_of_another_dtype_or_shape_stop_training_naming_the_shard(store_dir: Path, tmp_path: Path, bad,
                                                                             message):
    """Issue 18, finding 6: int8 or 0-row video.npy trained silently; a wrong width named no shard."""
    import io

    import numpy as np


    store = tmp_path / "store"
    shutil.copytree(store_dir, store)
    rel = "shards/fake/1001-00000.tar"
    rewrite_shard(store, rel, lambda name, data: npy(bad(np.load(io.BytesIO(data)))) if name.endswith(".video.npy")
                  else data)
    with pytest.raises(ValueError, match=rf"{rel}.*: {message}"):
        main(cfg_for(store, tmp_path / "run", "train.steps=4", "train.num_samples=0"))
    assert checkpoint.list_checkpoints(tmp_path / "run") == []
