"""Attacks on what vod2chat promises about the files it reads (README: "Trust and failure").

Records, run directories, weights and eval files live on shared buckets that other people
write: nothing read may run code, and no path read from a file may leave the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from store_factory import make_store
from vod2chat.shards.schema import SchemaError, check_record, check_shard_path
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
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_shard_paths_must_stay_under_their_streamer(path: str):
    with pytest.raises(SchemaError, match="vods/fake/1000.json.*shard path"):
        check_shard_path(path, "fake", "vods/fake/1000.json")
    assert check_shard_path("shards/fake/1000-00000.tar", "fake", "r") == "shards/fake/1000-00000.tar"


def test_record_names_must_match_where_it_is_stored():
    rec = {"streamer": "fake", "vod_id": "1000", "shards": [{"path": "shards/fake/1000-00000.tar"}]}
    assert check_record(rec, "r", "fake", "1000") is rec
    with pytest.raises(SchemaError, match="stored as fake/1001"):
        check_record(rec, "r", "fake", "1001")
    with pytest.raises(SchemaError, match="vod_id '../x'"):
        check_record({**rec, "vod_id": "../x"}, "r")
    with pytest.raises(SchemaError, match="shards"):
        check_record({**rec, "shards": "shards/fake/x.tar"}, "r")


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
    from vod2chat.ingest.config import IngestConfig
    from vod2chat.ingest.worker import Encoders, ingest_vod, pair_inputs

    vods = tmp_path / "vods"
    vods.mkdir()
    (vods / "1000.mp4").symlink_to(real_data / "video/nasa_13013.mp4")
    (vods / "1000.txt").symlink_to(real_data / "chat/tcd_irc_569086201.txt")
    root = tmp_path / "a/b/store"
    cfg = IngestConfig(store=str(root), streamer="fake", inputs=[str(vods)], segment_s=10.0, lookback_s=5.0,
                       segments_per_shard=2, video_weights="random", audio_weights="random", device="cpu",
                       progress=False)
    enc = Encoders(cfg)
    store = Store(cfg.store)
    [job] = pair_inputs(cfg.inputs, cfg.streamer)
    assert ingest_vod(job, store, enc, cfg).status == "done"
    victims = plant_outside_paths(root, tmp_path / "outside")
    cfg.segment_s, cfg.replace = 5.0, True  # other settings: replacing deletes the old record's shards
    with pytest.raises(StoreError, match="1000.json: shard path"):
        ingest_vod(job, store, enc, cfg)
    assert all(v.read_bytes() == b"someone else's data" for v in victims)
    assert (root / "shards/fake/1000-00000.tar").exists()  # nothing committed was lost either
