"""The same store, reader and trainer against a real S3-compatible server on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vod2chat.config import load_config
from s3_server import moto_server
from vod2chat.shards.reader import Selection, ShardStream, read_store, select_records, shard_urls
from vod2chat.shards.store import Store
from helpers import DEBUG, VAL, scalars
from store_factory import make_store
from vod2chat.trainer.config import Config

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
    out = subprocess.run([sys.executable, "-m", "vod2chat.launch.cli", "store", "ls", "s3://vod2chat-test/store1"],
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


@pytest.mark.slow
def test_the_ingest_command_works_unchanged_on_s3(s3, tmp_path: Path):
    """`vod2chat ingest` on a local Ray, writing to s3:// exactly as to a directory; a rerun is a no-op."""
    from vod2chat.synth.scenes import synthesize

    synthesize(tmp_path / "vods", seed=3, duration=12.0, vod_id="4242")
    cmd = [sys.executable, "-m", "vod2chat.launch.cli", "ingest", "--config", str(REPO / "launch/ingest_debug.toml"),
           "--store", "s3://vod2chat-test/ingested", "--streamer", "s3test", "--num-actors", "1",
           "--set", "progress=false", str(tmp_path / "vods")]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert first.returncode == 0 and "1 done, 0 skipped" in first.stdout, first.stdout + first.stderr
    store = Store("s3://vod2chat-test/ingested")
    rep = store.verify()
    assert rep.ok and rep.vods == 1 and not rep.orphans
    objects = {p: store.fs.info(p)["ETag"] for p in store.fs.find("vod2chat-test/ingested")}
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert second.returncode == 0 and "0 done, 1 skipped" in second.stdout, second.stdout + second.stderr
    assert {p: store.fs.info(p)["ETag"] for p in store.fs.find("vod2chat-test/ingested")} == objects


def test_the_input_cache_evicts_the_least_recently_used_and_the_larger_of_a_tie(tmp_path: Path):
    """Files fetched within one tick of the file system's clock have equal times: the order must not
    depend on the listing (the test below once lost the chat file that way)."""
    from vod2chat.ingest.inputs import evict

    # The small file is listed first (the top folder before the ones below), so listing order would evict it.
    old, video, chat = tmp_path / "a/old.mkv", tmp_path / "b/5151.mkv", tmp_path / "5151.irc"
    for p, n, t in ((old, 300, 1_000), (chat, 10, 2_000), (video, 500, 2_000)):
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x" * n)
        os.utime(p, ns=(t, t))
    evict(tmp_path, keep_bytes=400)
    assert sorted(p.name for p in tmp_path.rglob("*.*")) == ["5151.irc"]


def test_inputs_in_object_storage_are_fetched_once_per_node(s3, tmp_path: Path):
    """VODs in a bucket (what a cluster's GPU nodes can all reach) pair and ingest like local files."""
    from vod2chat.ingest.inputs import localize
    from vod2chat.synth.scenes import synthesize
    from vod2chat.ingest.features import ingest_encoders
    from vod2chat.ingest.worker import ingest_vod
    from helpers import debug_cfg, pair_inputs

    synthesize(tmp_path / "vods", seed=4, duration=12.0, vod_id="5151")
    store = Store("s3://vod2chat-test/fromurls")
    store.fs.put(str(tmp_path / "vods"), "vod2chat-test/vods", recursive=True)
    cfg = debug_cfg("s3://vod2chat-test/fromurls", input_cache=str(tmp_path / "cache"))
    [job] = pair_inputs(["s3://vod2chat-test/vods"], "urls")
    assert job.video == "s3://vod2chat-test/vods/5151.mkv" and job.chat == "s3://vod2chat-test/vods/5151.irc"
    enc = ingest_encoders(cfg)
    out = ingest_vod(job, store, enc, cfg)
    assert out.status == "done" and store.verify().ok
    assert out.record.setting("sources")["video"]["path"] == job.video  # the URL, not a node's cache path
    cached = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("5151.*")}
    assert sorted(cached) == ["5151.irc", "5151.mkv"]
    assert ingest_vod(job, store, enc, cfg).status == "skipped"
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("5151.*")}.keys() == cached.keys()
    # A rerun on a node that never saw the VOD skips it without fetching it (ranged reads only).
    elsewhere = debug_cfg("s3://vod2chat-test/fromurls", input_cache=str(tmp_path / "cache-elsewhere"))
    assert ingest_vod(job, store, enc, elsewhere).status == "skipped"
    assert not list((tmp_path / "cache-elsewhere").rglob("5151.*"))
    # The cache is bounded: fetching past its size evicts the least recently used input.
    size_gb = (tmp_path / "vods/5151.mkv").stat().st_size / 2**30
    store.fs.copy("vod2chat-test/vods/5151.mkv", "vod2chat-test/more/6161.mkv")
    localize("s3://vod2chat-test/more/6161.mkv", str(tmp_path / "cache"), cache_gb=size_gb * 1.5)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.*")) == ["5151.irc", "6161.mkv"]
    with pytest.raises(FileNotFoundError, match="s3://vod2chat-test/nothing"):
        pair_inputs(["s3://vod2chat-test/nothing"], "urls")


@pytest.mark.slow
def test_training_on_s3_equals_training_on_local_disk(s3, tmp_path: Path):
    """The same store in a bucket and in a directory: the trainer reads the same examples in the
    same order, so the runs log the same losses step by step."""
    from accelerate.state import AcceleratorState

    from vod2chat.trainer.main import main

    stores = {"s3": "s3://vod2chat-test/store3", "local": str(tmp_path / "local")}
    for url in stores.values():
        make_store(url)
    out = {}
    for name, url in stores.items():
        AcceleratorState._reset_state()
        out[name] = main(load_config(Config, DEBUG, [
            f"data.store={url}", VAL, f"train.run_dir={tmp_path / name}", "train.steps=5", "train.log_every=1",
            "train.progress=false", "train.num_samples=0"]))
    losses = {name: scalars(tmp_path / name)["train/loss"] for name in stores}
    assert [step for step, _ in losses["s3"]] == list(range(1, 6))
    assert losses["s3"] == losses["local"]
    assert out["s3"]["val/loss"] == out["local"]["val/loss"]
    assert (tmp_path / "s3/checkpoints/step_0000005/meta.json").exists()
