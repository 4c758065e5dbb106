"""The encoders' config is one section (EncoderConfig) that ingest, generate and live hold; configs
written before it (encoder keys at the top level) still load; a run leaves its loaded config alone."""

from __future__ import annotations

import ast
import copy
import dataclasses
import shutil
import tomllib
from pathlib import Path

import pytest

from helpers import DEBUG, random_encoders
from vod2chat.config import ConfigError, load_config, replaced, save_config
from vod2chat.inference.generate import GenerateConfig
from vod2chat.inference.live import LiveConfig
from vod2chat.ingest.config import DecodeConfig, EncoderConfig, IngestConfig

REPO = Path(__file__).resolve().parents[1]
# A store as vod2chat 0.2.0 wrote it before the sections existed (commit 92fcbe9): store.json, the
# record of VOD test/8 (in1.mp4 + chat_downloader_replay_b.json, random encoders, fp32) and the
# ingest.toml saved beside it, with video_weights, precision, prefetch ... at the top level. Its
# shard is left out: these tests only plan and add VODs.
OLD_STORE = Path(__file__).resolve().parent / "data" / "old_store"

OLD_GENERATE = """
run = "runs/a"
vod = "v.mkv"
video_weights = "random"
audio_weights = "random"
audio_pca = "pca.pth"
device = "cpu"
[sampling]
temperature = 0.0
"""
OLD_LIVE = """
run = "runs/a"
source = "-"
video_weights = "w.pth"
audio_weights = "random"
device = "cpu"
"""


def parse(argv: list[str]):
    from vod2chat.launch.args import parse_args
    from vod2chat.launch.cli import build_parser, config_of

    return config_of(parse_args(build_parser(argv), argv))


def test_old_configs_with_top_level_encoder_keys_load_into_the_sections(tmp_path: Path):
    old = load_config(IngestConfig, OLD_STORE / "ingest.toml")
    assert old.encoders == EncoderConfig(video_weights="random", audio_weights="random", precision="fp32",
                                         video_batch=16)
    assert old.decode == DecodeConfig() and (old.device, old.fps, old.segment_s) == ("cpu", 1.0, 10.0)
    # Saved again, it is the new layout and loads back to the same config.
    save_config(old, tmp_path / "new.toml")
    raw = tomllib.loads((tmp_path / "new.toml").read_text())
    assert raw["encoders"]["video_weights"] == "random" and "video_weights" not in raw and "prefetch" in raw["decode"]
    assert load_config(IngestConfig, tmp_path / "new.toml") == old

    (tmp_path / "chat.toml").write_text(OLD_GENERATE)  # generate's saved {out}.toml before the section
    g = load_config(GenerateConfig, tmp_path / "chat.toml")
    assert g.encoders == random_encoders(audio_pca="pca.pth") and g.device == "cpu" and g.sampling.temperature == 0.0
    (tmp_path / "live.toml").write_text(OLD_LIVE)
    live = load_config(LiveConfig, tmp_path / "live.toml")
    assert (live.encoders.video_weights, live.encoders.audio_weights, live.source) == ("w.pth", "random", "-")


def test_old_and_new_spellings_of_overrides_and_the_same_flags(tmp_path: Path):
    # Dotted overrides: the old spelling and the section's, applied in order on top of an old file.
    over = load_config(IngestConfig, OLD_STORE / "ingest.toml", ["encoders.video_weights=w.pth"])
    assert over.encoders.video_weights == "w.pth"
    cfg = load_config(IngestConfig, None, ["video_weights=a.pth", "encoders.video_weights=b.pth", "precision=bf16",
                                           "decode.prefetch=false", "seek_keyframes=false"])
    assert (cfg.encoders.video_weights, cfg.encoders.precision) == ("b.pth", "bf16")
    assert (cfg.decode.prefetch, cfg.decode.seek_keyframes) == (False, False)
    assert load_config(GenerateConfig, None, ["audio_weights=random"]).encoders.audio_weights == "random"
    # One file with both spellings of a key: refused, naming the file and both.
    (tmp_path / "both.toml").write_text('video_weights = "a"\n[encoders]\nvideo_weights = "b"\n')
    with pytest.raises(ConfigError, match=r"both.toml: video_weights and encoders.video_weights: one key given twice"):
        load_config(IngestConfig, tmp_path / "both.toml")
    with pytest.raises(ConfigError, match=r"encoders.video_wieghts: unknown key; did you mean encoders.video_weights"):
        load_config(IngestConfig, None, ["encoders.video_wieghts=x"])
    # The flags users type are the same as before the sections.
    i = parse(["ingest", "--store", "s", "--streamer", "x", "--weights", "random", "--audio-pca", "p.pth", "--precision",
               "fp32", "--video-batch", "8", "--no-prefetch", "--decode-threads", "2", "--device", "cpu"])
    assert i.encoders == EncoderConfig("random", "random", "p.pth", "fp32", 8)
    assert (i.decode.prefetch, i.decode.decode_threads, i.device) == (False, 2, "cpu")
    for argv in (["generate", "--run", "r", "--vod", "v.mkv"], ["live", "--run", "r", "--source", "-"]):
        c = parse(argv + ["--video-weights", "random", "--audio-weights", "random", "--precision", "fp32",
                          "--video-batch", "4"])
        assert c.encoders == random_encoders(precision="fp32", video_batch=4), argv


def test_encoder_fields_are_declared_once_and_no_stage_fabricates_another_stages_config():
    names = {f.name for f in dataclasses.fields(EncoderConfig)}
    for cls in (IngestConfig, GenerateConfig, LiveConfig):
        assert not names & {f.name for f in dataclasses.fields(cls)}, cls  # no copy with its own default
        assert cls().encoders == EncoderConfig()
    foreign = {"inference/generate.py": {"IngestConfig"}, "inference/live.py": {"IngestConfig", "GenerateConfig"}}
    for path, classes in foreign.items():
        calls = {n.func.id for n in ast.walk(ast.parse((REPO / path).read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert not calls & classes, (path, calls & classes)


def test_an_old_store_keeps_its_vod_and_takes_a_new_one_under_its_old_ingest_toml(real_data: Path, tmp_path: Path,
                                                                                  one_thread):
    """The encoders built from the section make the old fingerprints: the old VOD is recognised as
    done (same settings id) and a new VOD commits beside it; store.json is not rewritten."""
    from vod2chat.ingest.features import ingest_encoders
    from helpers import pair_inputs
    from vod2chat.ingest.worker import ingest_vod
    from vod2chat.shards.store import Store

    store_dir, vods = tmp_path / "store", tmp_path / "vods"
    shutil.copytree(OLD_STORE, store_dir)
    vods.mkdir()
    for vod, chat in (("8", "chat_downloader_replay_b.json"), ("9", "chat_downloader_replay_a.json")):
        (vods / f"{vod}.mp4").symlink_to(real_data / "video/in1.mp4")
        (vods / f"{vod}.json").symlink_to(real_data / "chat" / chat)
    cfg = load_config(IngestConfig, store_dir / "ingest.toml", [f"store={store_dir}", f"inputs={vods}"])
    store, before = Store(cfg.store), (store_dir / "store.json").read_bytes()
    old = store.read_record("test", "8")
    enc = ingest_encoders(cfg)
    jobs = {j.vod_id: j for j in pair_inputs(cfg.inputs, cfg.streamer)}
    assert ingest_vod(jobs["8"], store, enc, cfg).status == "skipped"
    new = ingest_vod(jobs["9"], store, enc, cfg)
    assert new.status == "done" and new.record.fingerprints == old.fingerprints
    assert (store_dir / "store.json").read_bytes() == before
    # The stage's fps reaches the fingerprint (here the old store's 1.0 is also the default).
    assert ingest_encoders(replaced(cfg, {"fps": 2.0})).fingerprints()["video"]["fps"] == 2.0


def test_train_and_generate_leave_the_loaded_config_as_it_was(random_encoder_run: Path, real_data: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """What a run derives (the store's absolute URL, resume, the tokenizer's vocabulary size) goes
    into its own copy, which is what it saves; the caller's config object stays as loaded."""
    from accelerate.state import AcceleratorState

    from vod2chat.inference.generate import main as generate
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main as train

    monkeypatch.chdir(random_encoder_run.parent)  # a relative store, which the run saves absolute
    AcceleratorState._reset_state()
    cfg = load_config(Config, DEBUG, ["data.store=store", f"train.run_dir={tmp_path / 'run'}", "train.steps=2",
                                      "train.progress=false", "train.num_samples=0", 'data.val_vods=["1002"]'])
    loaded = copy.deepcopy(cfg)
    train(cfg)
    assert cfg == loaded
    saved = load_config(Config, tmp_path / "run" / "config.toml")
    assert saved.data.store == str((random_encoder_run.parent / "store").resolve()) != cfg.data.store
    assert saved.model.vocab_size != cfg.model.vocab_size

    g = load_config(GenerateConfig, REPO / "launch/generate_debug.toml", [
        f"run={tmp_path / 'run'}", f"vod={real_data / 'video/in1.mp4'}", "end=2", f"out={tmp_path / 'chat.json'}",
        "progress=false"])
    loaded = copy.deepcopy(g)
    generate(g)
    assert g == loaded and load_config(GenerateConfig, tmp_path / "chat.toml") == g
