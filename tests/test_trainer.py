"""The trainer on real shards: learning, TensorBoard, exact resume, 2-process gloo DDP,
time causality of examples, configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vod2chat.config import load_config
from vod2chat.shards.schema import Sample
from helpers import DEBUG, REPO, VAL, cfg_for, scalars
from store_factory import make_store
from vod2chat.trainer.config import Config, DataConfig
from vod2chat.trainer.data import av_window, make_loader, sample_examples
from vod2chat.trainer.main import main
from vod2chat.trainer.processes import mixed_precision
from vod2chat.trainer.tokenizer import ChatTokenizer



@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tstore") / "store"
    make_store(d)
    return d


@pytest.mark.slow
def test_training_learns_and_logs_to_tensorboard(store_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    out = main(cfg_for(store_dir, run, "train.steps=60", "train.eval_every=30", "train.log_every=5"))
    s = scalars(run)
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/examples_per_s", "train/tokens_per_s",
                "val/loss", "val/ppl", "val/loss_av_shuffled"):
        assert tag in s, f"{tag} missing from TensorBoard: {sorted(s)}"
    losses = [v for _, v in s["train/loss"]]
    assert losses[-1] < 0.5 * losses[0]
    assert [st for st, _ in s["val/loss"]] == [30, 60]
    assert out["val/ppl"] == pytest.approx(np.exp(out["val/loss"]), rel=1e-4)
    # Generated messages next to real ones, as text.
    ea = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0})
    ea.Reload()
    assert any("samples" in t for t in ea.Tags()["tensors"])
    # Checkpoints: last k kept, readable meta, resolved config saved.
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step_0000050", "step_0000060"]
    meta = json.loads((run / "checkpoints/step_0000060/meta.json").read_text())
    assert meta["step"] == 60 and meta["fingerprints"]["video"]["model"] == "fake" and meta["world_size"] == 1
    assert load_config(Config, run / "checkpoints/step_0000060/config.toml").train.steps == 60


@pytest.mark.slow
def test_resume_matches_the_uninterrupted_run(store_dir: Path, tmp_path: Path):
    full = tmp_path / "full"
    main(cfg_for(store_dir, full, "train.steps=20", "train.log_every=1", "model.dropout=0.1"))
    # The interrupted run: only what existed at step 10 (its checkpoint and tokenizer).
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    main(cfg_for(store_dir, tmp_path / "scratch", "train.steps=20", "train.save_every=10", "train.keep_last=5",
                 "train.log_every=1", "model.dropout=0.1"))
    shutil.copytree(tmp_path / "scratch/checkpoints/step_0000010", part / "checkpoints/step_0000010")
    shutil.copy(tmp_path / "scratch/tokenizer.json", part / "tokenizer.json")
    main(cfg_for(store_dir, part, "train.steps=20", "train.log_every=1", "model.dropout=0.1", "train.resume=true"))
    a = dict(scalars(full)["train/loss"])
    b = dict(scalars(part)["train/loss"])
    assert sorted(b) == list(range(11, 21))
    for step in range(11, 21):
        assert b[step] == pytest.approx(a[step], abs=1e-5), f"step {step}: resumed {b[step]} vs {a[step]}"


def test_resume_refuses_a_store_with_other_features(store_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    main(cfg_for(store_dir, run, "train.steps=10", "train.num_samples=0"))
    other = tmp_path / "other"
    shutil.copytree(store_dir, other)
    rec_path = next((other / "vods").rglob("*.json"))
    for p in (other / "vods").rglob("*.json"):
        rec = json.loads(p.read_text())
        rec["fingerprints"]["video"]["model"] = "resnet50"
        p.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=r"(?s)resnet50.*fake"):
        main(cfg_for(other, run, "train.steps=20", "train.resume=true"))
    assert rec_path.exists()


def test_examples_never_see_the_future():
    rng = np.random.default_rng(0)
    meta = {"video_t0": 0.0, "fps": 1.0, "audio_t0": 0.0, "audio_hop": 0.96, "audio_win": 0.96, "start": 10.0, "end": 20.0}
    video = rng.standard_normal((20, 2048)).astype(np.float16)
    audio = rng.standard_normal((20, 128)).astype(np.float16)
    chat = {"context": [{"t": 9.0, "user": "a", "text": "before"}],
            "messages": [{"t": 12.5, "user": "b", "text": "hi"}, {"t": 15.0, "user": "c", "text": "yo"}]}
    s = Sample("s__1__000001", video, audio, chat, meta)
    v, vt, a, at = av_window(s, 12.5, window_s=5.0)
    assert len(v) == 5 and vt.min() >= 0 and vt.max() < 5.0  # frames at 8..12 s
    assert len(a) == 6 and at.min() >= 0  # windows ending at 7.68..12.48 s (window j ends at (j+1)*0.96)
    # Changing every feature after t changes nothing in the example.
    v2, a2 = video.copy(), audio.copy()
    v2[13:] = 7
    a2[13:] = 7  # windows starting at >= 12.48 end after t
    s2 = Sample(s.key, v2, a2, chat, meta)
    tok = ChatTokenizer.train(["hi yo before"] * 5, 300, 1)
    cfg = DataConfig(window_s=5.0)
    e1, e2 = next(sample_examples(s, tok, cfg)), next(sample_examples(s2, tok, cfg))
    np.testing.assert_array_equal(e1.video, e2.video)
    np.testing.assert_array_equal(e1.audio, e2.audio)
    assert e1.context == ["before"] and e1.text == "hi"
    a2[11] = 7  # the window [10.56, 11.52) was heard by t: changing it must show
    assert not np.array_equal(next(sample_examples(Sample(s.key, v2, a2, chat, meta), tok, cfg)).audio, e1.audio)
    ex = list(sample_examples(s, tok, cfg))
    assert ex[1].context == ["before", "hi"]  # earlier messages become context, later ones never


def test_streamer_token_starts_every_example_of_its_streamer():
    meta = {"streamer": "forest", "video_t0": 0.0, "fps": 1.0, "audio_t0": 0.0, "audio_hop": 0.96, "audio_win": 0.96}
    chat = {"context": [], "messages": [{"t": 2.5, "user": "b", "text": "hi"}, {"t": 3.0, "user": "c", "text": "yo"}]}
    s = Sample("forest__1__000000", np.zeros((4, 2048), np.float16), np.zeros((4, 128), np.float16), chat, meta)
    tok = ChatTokenizer.train(["hi yo"] * 5, 300, 1, streamers=["forest", "harbor"])
    on = list(sample_examples(s, tok, DataConfig(window_s=2.0, streamer_token=True)))
    off = list(sample_examples(s, tok, DataConfig(window_s=2.0)))
    for a, b in zip(on, off):
        assert a.tokens[:2] == [tok.bos_id, tok.streamer_id("forest")] and a.tokens[2:] == b.tokens[1:]
        assert a.n_prefix == b.n_prefix + 1 and a.text == b.text


def test_a_given_tokenizer_without_the_streamers_token_is_a_warning(store_dir: Path, tmp_path: Path, caplog):
    from accelerate import Accelerator

    from vod2chat.trainer.data import RunSplits
    from vod2chat.trainer.steps import build_tokenizer

    for streamers, warned in (((), True), (["fake"], False)):  # the factory store's one streamer
        path = tmp_path / f"tok{len(streamers)}.json"
        ChatTokenizer.train(["red green blue"] * 10, 300, 1, streamers=streamers).save(path)
        cfg = cfg_for(store_dir, tmp_path / "run", "data.streamer_token=true", f"tokenizer.path={path}")
        caplog.clear()
        with caplog.at_level("WARNING", logger="vod2chat.trainer.steps"):
            build_tokenizer(cfg, tmp_path / "run", Accelerator(cpu=True), RunSplits(cfg.data))
        assert (f"{path} has no token for streamer(s) fake" in caplog.text) == warned, caplog.text


@pytest.mark.multiprocess
def test_two_ranks_see_disjoint_examples_whose_union_is_the_split(store_dir: Path, tmp_path: Path):
    cfg = load_config(Config, DEBUG, [f"data.store={store_dir}", VAL])
    tok = ChatTokenizer.train(["red green blue loud quiet pog wow"] * 10, 300, 1)
    tok_path = tmp_path / "tok.json"
    tok.save(tok_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                    str(REPO / "tests/ddp_keys.py"), str(store_dir), str(tok_path), str(tmp_path)],
                   check=True, env=env, timeout=300, cwd=REPO)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["keys"] and r1["keys"] and set(r0["keys"]).isdisjoint(r1["keys"])
    single = make_loader(cfg.data, tok, "train", 4, 0, 1, seed=0)
    assert sorted(r0["keys"] + r1["keys"]) == sorted(k for b in single for k in b["keys"])


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_process_gloo_training_run(store_dir: Path, tmp_path: Path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29518",
                    str(REPO / "trainer/main.py"), "--config", str(DEBUG), f"data.store={store_dir}", VAL,
                    f"train.run_dir={run}", "train.steps=30", "train.progress=false"],
                   check=True, env=env, timeout=600, cwd=REPO)
    meta = json.loads((run / "checkpoints/step_0000030/meta.json").read_text())
    assert meta["world_size"] == 2 and meta["grad_accum"] == 1  # global 8 = 2 ranks x micro 4
    losses = [v for _, v in scalars(run)["train/loss"]]
    assert losses[-1] < losses[0]


def test_mixed_precision_choice():
    if not torch.cuda.is_available():
        assert mixed_precision("auto") == "no"
        with pytest.raises(ValueError, match="fp16 needs a GPU"):
            mixed_precision("fp16")
    assert mixed_precision("bf16") == "bf16"


def test_bf16_on_cpu_trains(store_dir: Path, tmp_path: Path):
    out = main(cfg_for(store_dir, tmp_path / "bf16", "train.steps=6", "train.mixed_precision=bf16", "train.num_samples=0"))
    assert np.isfinite(out["train/loss"])


def test_accelerate_configs_load():
    # The TOML configs of every stage are checked in tests/test_config.py.
    for p in sorted((REPO / "launch/accelerate").glob("*.yaml")):
        y = yaml.safe_load(p.read_text())
        assert y["num_processes"] >= 1 and "distributed_type" in y, p
    with pytest.raises(Exception, match="unknown key"):
        load_config(Config, DEBUG, ["train.stepz=3"])
    assert load_config(Config, DEBUG, ["train.steps=7", "data.streamers=a,b"]).data.streamers == ["a", "b"]


def test_each_vods_lookback_must_cover_the_window(tmp_path: Path):
    """Cut settings are per VOD (a store may mix them); the trainer checks each selected VOD."""
    root = tmp_path / "store"
    make_store(root, vods=4, segments=2)
    for vod, lookback, seg in (("1000", 20.0, 10.0), ("1001", 5.0, 30.0), ("1002", 10.0, 10.0), ("1003", 10.0, 20.0)):
        p = root / f"vods/fake/{vod}.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "lookback_s": lookback, "segment_s": seg,
                                 "context_messages": 8}))
    with pytest.raises(ValueError, match=r"data.window_s=10 needs 10 s .* fake/1001 \(5 s\)\. Set data.window_s<=5, "
                                         r"or re-ingest them with --set lookback_s=10 --replace"):
        main(cfg_for(root, tmp_path / "run", "train.steps=1"))
    with pytest.raises(ValueError, match=r"data.context_messages=9 .* fake/1000 \(8\)"):
        main(cfg_for(root, tmp_path / "run2", "train.steps=1", "data.window_s=5.0", "data.context_messages=9"))
    out = main(cfg_for(root, tmp_path / "run3", "train.steps=1", "data.window_s=5.0", "train.num_samples=0"))
    assert out["val/loss"] > 0  # mixed segment lengths train together
