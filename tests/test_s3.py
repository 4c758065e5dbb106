"""The same store, reader and trainer against a real S3-compatible server on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launch.config import load_config
from s3_server import moto_server
from shards.reader import Selection, ShardStream, read_store, select_records, shard_urls
from shards.store import Store
from store_factory import make_store
from trainer.config import Config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3():
    import s3fs

    with moto_server() as url:
        fs = s3fs.S3FileSystem()
        fs.mkdir("vod2chat-test")
        yield url
        s3fs.S3FileSystem.clear_instance_cache()


def test_store_on_s3_commit_verify_gc(s3):
    store = make_store("s3://vod2chat-test/store1", vods=2, segments=4)
    assert not store.local
    rep = store.verify()
    assert rep.ok and rep.vods == 2 and rep.shards == 4 and not rep.orphans
    # An orphan (a crashed ingest's shard) is listed, then collected.
    store.fs.pipe(store.abspath("shards/fake/999-00000.tar"), b"not committed")
    assert store.verify().orphans == ["shards/fake/999-00000.tar"]
    assert store.gc(min_age_s=0) == ["shards/fake/999-00000.tar"]
    assert len(list(read_store(store))) == 8
    out = subprocess.run([sys.executable, "-m", "launch.cli", "store", "ls", "s3://vod2chat-test/store1"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "fake" in out and " 2 " in out


def test_growing_store_never_breaks_a_reader(s3):
    store = make_store("s3://vod2chat-test/store2", vods=2, segments=4)
    urls = shard_urls(store, select_records(store, Selection()))
    stream = iter(ShardStream(urls, shuffle_shards=False))
    first = next(stream)
    make_store("s3://vod2chat-test/store2", vods=3, segments=4, seed=0)  # another VOD lands meanwhile
    rest = list(stream)
    assert 1 + len(rest) == 8 and first.key not in {s.key for s in rest}
    assert len(select_records(Store("s3://vod2chat-test/store2"), Selection())) == 3  # new readers see it


def test_trainer_streams_from_s3(s3, tmp_path: Path):
    from trainer.main import main

    make_store("s3://vod2chat-test/store3")
    cfg = load_config(Config, REPO / "launch/debug.toml", [
        "data.store=s3://vod2chat-test/store3", f"train.run_dir={tmp_path / 'run'}", "train.steps=10",
        "train.progress=false", "train.num_samples=0"])
    out = main(cfg)
    assert out["val/loss"] > 0 and (tmp_path / "run/checkpoints/step_0000010/meta.json").exists()
