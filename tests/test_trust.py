"""Attacks on what vod2chat promises about the files it reads (docs/trust.md).

Records, run directories, weights and eval files live on shared buckets that other people
write: nothing read may run code, and no path read from a file may leave the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from store_factory import make_store
from vod2chat.shards.schema import SchemaError, VodRecord, check_shard_path
from vod2chat.shards.store import Store, StoreError

BAD_PATHS = [
    "../outside/victim.tar",  # relative, leaves the store
    "/abs/victim.tar",  # absolute
    "shards/fake/../../../outside/victim.tar",  # looks right, is not normalised
    "shards/fake/./1000-00000.tar",
    "shards/other/1000-00000.tar",  # another streamer's shard: replacing would delete it
    "shards/fake/sub/1000-00000.tar",
    "shards/fake/1000-00000.tar\n",
    "shards/fake\\..\\..\\victim.tar",
    "s3://elsewhere/shards/fake/1000-00000.tar",
    "shards/fake/1000-00000.json",
    "shards/fake/1001-00000.tar",  # another VOD's shard: replacing 1000 would delete it
    "shards/fake/1000.tar",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_shard_paths_must_stay_under_their_streamer(path: str):
    with pytest.raises(SchemaError, match="vods/fake/1000.json.*shard path"):
        check_shard_path(path, "fake", "vods/fake/1000.json", "1000")
    assert check_shard_path("shards/fake/1000-00012.tar", "fake", "r", "1000") == "shards/fake/1000-00012.tar"


def test_record_names_must_match_where_it_is_stored():
    rec = {"streamer": "fake", "vod_id": "1000", "duration": 10.0, "segments": 1, "messages": 0, "fingerprints": {},
           "shards": [{"path": "shards/fake/1000-00000.tar", "samples": 1, "bytes": 10}]}
    assert VodRecord.from_json(rec, "r", "fake", "1000").to_json() == rec
    with pytest.raises(SchemaError, match="stored as fake/1001"):
        VodRecord.from_json(rec, "r", "fake", "1001")
    with pytest.raises(SchemaError, match="vod_id '../x'"):
        VodRecord.from_json({**rec, "vod_id": "../x"}, "r")
    with pytest.raises(SchemaError, match="shards"):
        VodRecord.from_json({**rec, "shards": "shards/fake/x.tar"}, "r")


def plant_outside_paths(store_root: Path, outside: Path) -> list[Path]:
    """Point a committed record at files outside the store (one relative, one absolute)."""
    outside.mkdir()
    victims = [outside / "victim-rel.tar", outside / "victim-abs.tar"]
    for v in victims:
        v.write_bytes(b"someone else's data")
    rec_path = store_root / "vods/fake/1000.json"
    rec = json.loads(rec_path.read_text())
    rel = Path("..") / ".." / ".." / outside.name / victims[0].name  # relative to the store root
    assert (store_root / rel).resolve() == victims[0].resolve()
    rec["shards"] += [{**rec["shards"][0], "path": str(rel)}, {**rec["shards"][0], "path": str(victims[1])}]
    rec_path.write_text(json.dumps(rec))
    return victims


def test_outside_files_survive_verify_gc_and_the_trainer(tmp_path: Path):
    from vod2chat.config import load_config
    from vod2chat.launch.cli import main as cli
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main as train

    root = tmp_path / "a/b/store"
    make_store(root, vods=2, segments=2)
    victims = plant_outside_paths(root, tmp_path / "outside")
    store = Store(str(root))
    with pytest.raises(StoreError, match="1000.json: shard path '../../../outside/victim-rel.tar'"):
        list(store.records())
    rep = store.verify()
    assert not rep.ok and len(rep.bad_records) == 1 and "1000.json" in rep.bad_records[0]
    assert rep.vods == 1  # the good VOD is still checked
    # gc would take the bad record's own shards for orphans: it refuses instead.
    with pytest.raises(StoreError, match="bad VOD record"):
        store.gc(min_age_s=0)
    assert cli(["store", "verify", str(root)]) == 1
    assert sorted(p.name for p in (root / "shards/fake").iterdir()) == ["1000-00000.tar", "1001-00000.tar"]
    cfg = load_config(Config, Path(__file__).resolve().parents[1] / "launch/debug.toml",
                      [f"data.store={root}", f"train.run_dir={tmp_path / 'run'}", "train.progress=false",
                       "train.steps=1", "data.val_vods=[\"1001\"]"])
    with pytest.raises(StoreError, match="1000.json: shard path"):
        train(cfg)
    assert all(v.read_bytes() == b"someone else's data" for v in victims)


def test_outside_files_survive_ingest_replace(real_data: Path, tmp_path: Path):
    from helpers import ingest_config, pair_inputs
    from vod2chat.ingest.features import ingest_encoders
    from vod2chat.ingest.worker import ingest_vod

    vods = tmp_path / "vods"
    vods.mkdir()
    (vods / "1000.mp4").symlink_to(real_data / "video/nasa_13013.mp4")
    (vods / "1000.txt").symlink_to(real_data / "chat/tcd_irc_569086201.txt")
    root = tmp_path / "a/b/store"
    cfg = ingest_config(store=str(root), streamer="fake", inputs=[str(vods)], segment_s=10.0, lookback_s=5.0,
                        segments_per_shard=2, video_weights="random", audio_weights="random", device="cpu",
                        progress=False)
    enc = ingest_encoders(cfg)
    store = Store(cfg.store)
    [job] = pair_inputs(cfg.inputs, cfg.streamer)
    assert ingest_vod(job, store, enc, cfg).status == "done"
    victims = plant_outside_paths(root, tmp_path / "outside")
    cfg.segment_s, cfg.replace = 5.0, True  # other settings: replacing deletes the old record's shards
    with pytest.raises(StoreError, match="1000.json: shard path"):
        ingest_vod(job, store, enc, cfg)
    assert all(v.read_bytes() == b"someone else's data" for v in victims)
    assert (root / "shards/fake/1000-00000.tar").exists()  # nothing committed was lost either


# -- 1. nothing read is executed ---------------------------------------------------------
class Payload:
    """A pickle that writes a marker file when unpickled: what an attacker plants."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def plant(path: Path, marker: Path) -> None:
    import pickle

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".pt", ".pth"):
        torch.save({"weight": Payload(marker)}, path)  # torch's zip format, the payload in data.pkl
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))  # where JSON is expected


def test_the_payload_is_live(tmp_path: Path):
    """The attack is real: an unpickling loader runs it (so the tests below can fail)."""
    import pickle

    import torch

    marker = tmp_path / "marker"
    plant(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.read_text() == "code ran"
    marker.unlink()
    plant(tmp_path / "x.json", marker)
    pickle.loads((tmp_path / "x.json").read_bytes())
    assert marker.exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A store and a real 2-step run on it (one checkpoint)."""
    from vod2chat.config import load_config
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main as train

    d = tmp_path_factory.mktemp("trust")
    make_store(d / "store", vods=4, segments=2)
    cfg = load_config(Config, Path(__file__).resolve().parents[1] / "launch/debug.toml",
                      [f"data.store={d / 'store'}", f"train.run_dir={d / 'run'}", "train.progress=false", 'data.val_vods=["1003"]',
                       "train.steps=2", "train.eval_batches=1", "train.num_samples=0"])
    train(cfg)
    return d / "store", d / "run"


def failure_text(fn, capsys) -> str:
    """What the user sees when a command refuses: the error chain, or its stderr and exit code."""
    try:
        rc = fn()
    except SystemExit as e:
        rc = e.code
    except Exception as e:  # noqa: BLE001 - the message is what is checked
        parts = []
        while e is not None:
            parts.append(f"{type(e).__name__}: {e}")
            e = e.__cause__ or e.__context__
        return "\n".join(parts)
    assert rc not in (0, None), "the command succeeded on a planted pickle"
    out = capsys.readouterr()
    return out.out + out.err


def copy_run(run: Path, dst: Path) -> tuple[Path, Path]:
    import shutil

    shutil.copytree(run, dst)
    [ckpt] = sorted((dst / "checkpoints").iterdir())
    return dst, ckpt


def reseal(ckpt: Path, path: Path) -> None:
    """An attacker who can write the run dir can also rewrite meta.json's checksums: do so, so
    that the planted file reaches the loader (checksums catch accidents, not attacks)."""
    import hashlib

    if path.name == "meta.json":
        return
    meta = json.loads((ckpt / "meta.json").read_text())
    if path.parent == ckpt and path.name in meta.get("files", {}):
        meta["files"][path.name] = {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        (ckpt / "meta.json").write_text(json.dumps(meta))


def train_resume(store: Path, run: Path, resume: bool = True):
    from vod2chat.config import load_config
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main as train

    cfg = load_config(Config, Path(__file__).resolve().parents[1] / "launch/debug.toml",
                      [f"data.store={store}", f"train.run_dir={run}", "train.progress=false", "train.steps=3", 'data.val_vods=["1003"]',
                       "train.eval_batches=1", "train.num_samples=0", f"train.resume={str(resume).lower()}"])
    return lambda: train(cfg)


@pytest.mark.parametrize("target,command", [
    ("ckpt/model.pt", "resume"), ("ckpt/optim.pt", "resume"), ("ckpt/sched.pt", "resume"),
    ("ckpt/rng_rank0.pt", "resume"), ("run/tokenizer.json", "resume"), ("ckpt/data_rank0.json", "resume"),
    ("ckpt/selection.json", "resume"), ("ckpt/meta.json", "resume"), ("ckpt/config.toml", "eval"),
    ("ckpt/meta.json", "eval"),
    ("ckpt/model.pt", "eval"), ("ckpt/tokenizer.json", "eval"), ("ckpt/model.pt", "generate"),
    ("ckpt/tokenizer.json", "generate"),
])
def test_planted_pickles_in_a_run_never_run(tiny_run, tmp_path: Path, capsys, target: str, command: str):
    from vod2chat.launch.cli import main as cli

    store, run0 = tiny_run
    run, ckpt = copy_run(run0, tmp_path / "run")
    path = (ckpt if target.startswith("ckpt/") else run) / target.split("/", 1)[1]
    assert path.exists()  # a file the command really reads
    marker = tmp_path / "marker"
    plant(path, marker)
    reseal(ckpt, path)
    video = Path(__file__).resolve().parents[2] / "shared/data/real/video/nasa_13013.mp4"
    fn = {"resume": train_resume(store, run),
          "eval": lambda: cli(["eval", "--run", str(run), "--no-progress", "--max-moments", "4",
                               "--num-diversity-samples", "0"]),
          "generate": lambda: cli(["generate", "--run", str(run), "--vod", str(video), "--weights", "random",
                                   "--out", str(tmp_path / "out.json"), "--rate", "10"])}[command]
    text = failure_text(fn, capsys)
    assert not marker.exists(), f"a planted pickle in {target} ran code on {command}"
    assert path.name in text, f"the error does not name {path.name}:\n{text}"
    if path.suffix == ".pt":  # it reached the loader, which said why
        assert "could run code: refused" in text, text


@pytest.mark.parametrize("target", ["video_weights", "audio_weights", "audio_pca"])
def test_planted_pickles_as_encoder_weights_never_run(tiny_run, tmp_path: Path, capsys, target: str):
    from vod2chat.launch.cli import main as cli

    _, run = tiny_run
    evil = tmp_path / f"{target}.pth"
    marker = tmp_path / "marker"
    plant(evil, marker)
    video = Path(__file__).resolve().parents[2] / "shared/data/real/video/nasa_13013.mp4"
    flags = {"video_weights": ["--video-weights", str(evil), "--audio-weights", "random"],
             "audio_weights": ["--video-weights", "random", "--audio-weights", str(evil)],
             "audio_pca": ["--weights", "random", "--audio-pca", str(evil)]}[target]
    text = failure_text(lambda: cli(["generate", "--run", str(run), "--vod", str(video), *flags,
                                     "--out", str(tmp_path / "out.json"), "--rate", "10"]), capsys)
    assert not marker.exists(), f"a planted pickle as {target} ran code"
    assert evil.name in text, text


def test_planted_pickles_in_a_store_never_run(tiny_run, tmp_path: Path, capsys):
    """Store records and the eval candidate file are JSON: a pickle there is refused, by name."""
    import shutil

    from vod2chat.launch.cli import main as cli

    store0, run0 = tiny_run
    run, _ = copy_run(run0, tmp_path / "run")
    marker = tmp_path / "marker"
    cands = tmp_path / "cands.json"
    plant(cands, marker)
    text = failure_text(lambda: cli(["eval", "--run", str(run), "--no-progress", "--max-moments", "4",
                                     "--num-diversity-samples", "0", "--split", "val", "--candidates-file", str(cands)]), capsys)
    assert not marker.exists() and "cands.json" in text, text
    store = tmp_path / "store"
    shutil.copytree(store0, store)
    plant(store / "vods/fake/1000.json", marker)
    for command in (["store", "ls", str(store)], ["store", "verify", str(store)],
                    ["eval", "--run", str(run), "--store", str(store), "--no-progress"]):
        text = failure_text(lambda: cli(command), capsys)
        assert not marker.exists() and "1000.json" in text, (command, text)
    text = failure_text(train_resume(store, tmp_path / "run2", resume=False), capsys)
    assert not marker.exists() and "1000.json" in text, text


def test_a_pickled_feature_array_in_a_shard_never_runs(tmp_path: Path, capsys):
    """A shard whose video.npy holds a pickled object array, its record resealed to match."""
    import hashlib
    import io
    import tarfile

    import numpy as np

    root = tmp_path / "store"
    make_store(root, vods=4, segments=2)
    marker = tmp_path / "marker"
    shard = root / "shards/fake/1000-00000.tar"
    with tarfile.open(shard) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    evil = io.BytesIO()
    np.save(evil, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tf:
        for m, data in members:
            if m.name.endswith(".video.npy"):
                data = evil.getvalue()
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    np.load(io.BytesIO(evil.getvalue()), allow_pickle=True)  # the payload is live ...
    assert marker.exists()
    marker.unlink()
    rec_path = root / "vods/fake/1000.json"
    rec = json.loads(rec_path.read_text())
    rec["shards"][0].update(bytes=shard.stat().st_size, sha256=hashlib.sha256(shard.read_bytes()).hexdigest())
    rec_path.write_text(json.dumps(rec))
    text = failure_text(train_resume(root, tmp_path / "run", resume=False), capsys)  # a fresh run
    assert not marker.exists(), "a pickled array in a shard ran code"  # ... but never here
    assert "1000" in text and "bject" in text, text
