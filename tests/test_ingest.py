"""Ingest end to end: real videos and chat through the plain worker, and the Ray fan-out
with an actor killed mid-run and a corrupt video among good ones."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import debug_cfg, pair_inputs
from vod2chat.ingest.features import Encoders, ingest_encoders
from vod2chat.ingest.worker import VodJob, ingest_vod
from vod2chat.shards.reader import read_store
from vod2chat.shards.store import Store, StoreError

# Each real video with a real chat log (the pairing is by file name, so the test links them
# under a shared VOD id in tmp_path; nothing is copied into the repo).
REAL_PAIRS = {
    "nasa_13013.mp4": "tcd_irc_569086201.txt",
    "in1.mp4": "chat_downloader_replay_a.json",
    "big_buck_bunny_0_30.webm": "v5_rechat_1087079172.json",
    "chaplin.mp4": "v5_rechat_410474822.json.gz",
}


def link_pairs(real_data: Path, dst: Path) -> Path:
    dst.mkdir()
    for i, (video, chat) in enumerate(REAL_PAIRS.items()):
        vid = f"{900 + i}"
        (dst / f"{vid}{Path(video).suffix}").symlink_to(real_data / "video" / video)
        chat_suffix = "".join(Path(chat).suffixes)
        (dst / f"{vid}{chat_suffix}").symlink_to(real_data / "chat" / chat)
    return dst


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def encoders() -> Encoders:
    return ingest_encoders(debug_cfg(Path("unused")))


@pytest.mark.slow
def test_every_real_video_ingests_and_reingest_changes_nothing(real_data: Path, tmp_path: Path, encoders: Encoders):
    vods = link_pairs(real_data, tmp_path / "vods")
    cfg = debug_cfg(tmp_path / "store", inputs=[str(vods)])
    store = Store(cfg.store)
    jobs = pair_inputs(cfg.inputs, cfg.streamer)
    assert [Path(j.video).suffix for j in jobs] == [".mp4", ".mp4", ".webm", ".mp4"]
    outcomes = [ingest_vod(j, store, encoders, cfg) for j in jobs]
    assert [o.status for o in outcomes] == ["done"] * 4
    rep = store.verify()
    assert rep.ok and rep.vods == 4 and not rep.orphans
    for o in outcomes:
        rec = o.record
        assert rec.segments == int(np.ceil(rec.duration / 10 - 1e-9))
        assert rec.fingerprints["video"]["weights"].startswith("random")
    nasa = outcomes[0].record
    assert 12.5 < nasa.duration < 13.5 and nasa.setting("sources")["video"]["video_stream"] is not None
    # Features: one row per second of video, one per 0.96 s of audio, times consistent.
    samples = {s.key: s for s in read_store(store)}
    s0 = samples["test__900__000001"]  # nasa, 10-13.1 s, 5 s look-back
    assert s0.video.shape == (9, 2048) and s0.video.dtype == np.float16
    assert s0.meta["video_t0"] == 5.0 and s0.audio.shape[1] == 128
    assert np.isfinite(s0.video.astype(np.float32)).all()
    assert all(5.0 <= t < 13.5 for t in s0.video_times())
    assert s0.audio_end_times()[-1] <= nasa.duration + 1e-6
    # Chat landed in the segment of its time, with context from before.
    for s in samples.values():
        for m in s.chat["messages"]:
            assert s.meta["start"] <= m["t"] <= s.meta["end"]
        assert all(m["t"] < s.meta["start"] for m in s.chat["context"])
    assert sum(len(s.chat["messages"]) for s in samples.values()) == sum(o.record.messages for o in outcomes)
    # A second ingest of the same VODs changes nothing.
    before = tree_digest(tmp_path / "store")
    again = [ingest_vod(j, store, encoders, cfg) for j in pair_inputs(cfg.inputs, cfg.streamer)]
    assert [o.status for o in again] == ["skipped"] * 4
    assert tree_digest(tmp_path / "store") == before


def test_other_settings_are_refused_then_replaced(real_data: Path, tmp_path: Path, encoders: Encoders):
    vods = tmp_path / "vods"
    vods.mkdir()
    (vods / "7.mp4").symlink_to(real_data / "video/in1.mp4")
    (vods / "7.json").symlink_to(real_data / "chat/chat_downloader_replay_b.json")
    cfg = debug_cfg(tmp_path / "store", inputs=[str(vods)])
    store = Store(cfg.store)
    [job] = pair_inputs(cfg.inputs, cfg.streamer)
    ingest_vod(job, store, encoders, cfg)
    other = debug_cfg(tmp_path / "store", inputs=[str(vods)], segment_s=5.0)
    with pytest.raises(StoreError, match="--replace"):
        ingest_vod(job, store, encoders, other)
    other.replace = True
    rec = ingest_vod(job, store, encoders, other).record
    assert rec.setting("segment_s") == 5.0 and rec.segments == 2
    assert [s.path for s in rec.shards] == ["shards/test/7-00001.tar"]  # never overwrites the old shard
    rep = store.verify()
    assert rep.ok and rep.orphans == []  # the replaced record's shards are gone


def test_store_refuses_other_encoders(real_data: Path, tmp_path: Path, encoders: Encoders):
    vods = tmp_path / "vods"
    vods.mkdir()
    (vods / "8.mp4").symlink_to(real_data / "video/in1.mp4")
    (vods / "8.json").symlink_to(real_data / "chat/chat_downloader_replay_b.json")
    cfg = debug_cfg(tmp_path / "store", inputs=[str(vods)])
    store = Store(cfg.store)
    [job] = pair_inputs(cfg.inputs, cfg.streamer)
    ingest_vod(job, store, encoders, cfg)
    other = ingest_encoders(cfg)
    other.fps = 2.0  # a different feature space: 2 rows per second
    job9 = VodJob("test", "9", job.video, job.chat)
    with pytest.raises(StoreError, match="different spaces"):
        ingest_vod(job9, store, other, cfg)
    assert store.read_record("test", "9") is None


def test_bf16_features_never_mix_into_an_fp32_store(real_data: Path, tmp_path: Path, encoders: Encoders):
    """Precision is part of the feature space: a bf16 ingest into an fp32 store is refused
    whole, and a bf16 worker handed a part of a VOD planned in fp32 (a mixed cluster) refuses it."""
    from vod2chat.ingest.worker import ingest_part, plan_vod

    vods = tmp_path / "vods"
    vods.mkdir()
    (vods / "8.mp4").symlink_to(real_data / "video/in1.mp4")
    (vods / "8.json").symlink_to(real_data / "chat/chat_downloader_replay_b.json")
    cfg = debug_cfg(tmp_path / "store", inputs=[str(vods)], precision="fp32")
    store = Store(cfg.store)
    [job] = pair_inputs(cfg.inputs, cfg.streamer)
    assert encoders.video.precision == "fp32"
    ingest_vod(job, store, encoders, cfg)
    bf16 = ingest_encoders(debug_cfg(tmp_path / "store", precision="bf16"))
    assert bf16.fingerprints()["video"]["precision"] == "bf16 autocast"
    with pytest.raises(StoreError, match="bf16 autocast"):
        ingest_vod(VodJob("test", "9", job.video, job.chat), store, bf16, cfg)
    assert store.read_record("test", "9") is None
    fresh = Store(str(tmp_path / "fresh"))
    plan = plan_vod(job, cfg, encoders.fingerprints(), fresh)
    with pytest.raises(StoreError, match="precision bf16"):
        ingest_part(plan, 0, fresh, bf16, cfg)
    assert not list((tmp_path / "fresh").rglob("*.tar"))


def test_decoding_ahead_and_keyframe_seeks_change_no_feature(real_data: Path, tmp_path: Path, encoders: Encoders):
    """The throughput levers are invisible in the store: decoding in a thread ahead of the
    encoders, and PyAV's keyframe seeks, give the same rows as decoding in line, every frame."""
    vods = tmp_path / "vods"
    vods.mkdir()
    (vods / "7.mp4").symlink_to(real_data / "video/in1.mp4")
    (vods / "7.json").symlink_to(real_data / "chat/chat_downloader_replay_b.json")
    rows = {}
    for name, kw in (("ahead", dict(prefetch=True)), ("inline", dict(prefetch=False, seek_keyframes=False))):
        cfg = debug_cfg(tmp_path / name, inputs=[str(vods)], decode_backend="pyav", **kw)
        [job] = pair_inputs(cfg.inputs, cfg.streamer)
        encoders.take_stages()
        assert ingest_vod(job, Store(cfg.store), encoders, cfg).status == "done"
        stages = encoders.take_stages()
        assert stages["decode video"] > 0 and stages["ResNet-50"] > 0 and stages["VGGish"] > 0
        assert ("waiting for decode" in stages) == cfg.decode.prefetch
        rows[name] = {s.key: (s.video, s.audio) for s in read_store(Store(cfg.store))}
    assert rows["ahead"].keys() == rows["inline"].keys() and rows["ahead"]
    for k, (v, a) in rows["ahead"].items():
        assert np.array_equal(v, rows["inline"][k][0]) and np.array_equal(a, rows["inline"][k][1])


def test_pairing_errors_name_the_file(tmp_path: Path):
    (tmp_path / "123.mkv").write_bytes(b"x")
    with pytest.raises(ValueError, match="no chat log for video .*123.mkv"):
        pair_inputs([str(tmp_path)], "s")


def test_vod_ids_keep_their_dots_and_never_collide(tmp_path: Path):
    def touch(*names: str) -> Path:
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        for n in names:
            (d / n).write_bytes(b"x")
        return d

    # Only known endings are cut: .json.gz is one ending; a generated <vod>.chat.json is not a chat for <vod>.
    d = touch("2424877187.mkv", "2424877187.json.gz", "2424877187.chat.json", "77.MP4", "77.irc")
    jobs = pair_inputs([str(d)], "s")
    assert [(j.vod_id, Path(j.chat).name) for j in jobs] == [("2424877187", "2424877187.json.gz"), ("77", "77.irc")]
    # Parts of one VOD once both became "3001" and one was dropped: now each is refused, by name and rule.
    d = touch("3001.part1.mp4", "3001.part2.mp4", "3001.part1.json", "3001.part2.json", "v1.2.mp4", "v1.2.txt")
    with pytest.raises(ValueError) as e:
        pair_inputs([str(d)], "s")
    for name in ("3001.part1.mp4", "3001.part2.mp4", "v1.2.mp4"):
        assert f"{name}: vod_id '{name[:-4]}' is not usable in the store" in str(e.value)
    assert "no dots" in str(e.value)
    d = touch("5.mp4", "5.mkv", "5.json")
    with pytest.raises(ValueError, match=r"two videos map to VOD id '5': .*5.mkv and .*5.mp4"):
        pair_inputs([str(d)], "s")
    d = touch("6.mp4", "6.json", "6.irc")
    with pytest.raises(ValueError, match=r"two chat logs for VOD id '6'"):
        pair_inputs([str(d)], "s")
    with pytest.raises(ValueError, match=r"streamer 'a.b' is not usable"):  # a key field too
        pair_inputs([str(d / "6.mp4"), str(d / "6.json")], "a.b")
    d = touch("7.avi", "7.json")
    with pytest.raises(ValueError, match=r"7.avi: neither a video"):
        pair_inputs([str(d / "7.avi"), str(d / "7.json")], "s")
    with pytest.raises(FileNotFoundError, match="no video files"):
        pair_inputs([str(d)], "s")


# -- Ray --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_vods(tmp_path_factory) -> Path:
    from vod2chat.synth.scenes import synthesize

    d = tmp_path_factory.mktemp("synth")
    for i in range(3):
        synthesize(d, seed=i, duration=40.0, vod_id=f"50{i}")
    return d


@pytest.mark.slow
def test_ray_ingest_survives_a_killed_actor(synth_vods: Path, tmp_path: Path, local_ray):
    import ray

    from vod2chat.ingest.driver import ACTOR_PREFIX, main

    cfg = debug_cfg(tmp_path / "store", inputs=[str(synth_vods)], num_actors=2, max_retries=2, segments_per_shard=1)
    store_dir = tmp_path / "store"
    killed: list[int] = []

    def kill_one_actor_mid_ingest() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and not list(store_dir.glob("shards/test/*.tar")):
            time.sleep(0.2)
        for a in ray.util.list_named_actors(all_namespaces=True):
            if a["name"].startswith(ACTOR_PREFIX):
                pid = ray.get(ray.get_actor(a["name"], namespace=a["namespace"]).info.remote())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return

    killer = threading.Thread(target=kill_one_actor_mid_ingest)
    killer.start()
    summary = main(cfg)
    killer.join()
    assert killed, "the test never killed an actor"
    assert sorted(summary.done) == ["test/500", "test/501", "test/502"] and not summary.failed
    store = Store(cfg.store)
    rep = store.verify()
    assert rep.ok and not rep.orphans
    keys = [s.key for s in read_store(store)]
    assert len(keys) == len(set(keys)) == 3 * 4  # 40 s in 10 s segments: nothing lost, nothing twice
    # A rerun skips everything.
    again = main(cfg)
    assert sorted(again.skipped) == ["test/500", "test/501", "test/502"] and not again.done


@pytest.mark.slow
def test_corrupt_video_fails_alone(synth_vods: Path, real_data: Path, tmp_path: Path, local_ray):
    from vod2chat.ingest.driver import main

    vods = tmp_path / "vods"
    vods.mkdir()
    (vods / "500.mkv").symlink_to(synth_vods / "500.mkv")
    (vods / "500.irc").symlink_to(synth_vods / "500.irc")
    data = (real_data / "video/in1.mp4").read_bytes()
    (vods / "666.mp4").write_bytes(data[:4096] + os.urandom(20000))  # a header, then garbage
    (vods / "666.json").symlink_to(real_data / "chat/chat_downloader_replay_a.json")
    cfg = debug_cfg(tmp_path / "store", inputs=[str(vods)], num_actors=2, max_retries=1)
    summary = main(cfg)
    assert summary.done == ["test/500"]
    assert list(summary.failed) == ["test/666"] and "666.mp4" in summary.failed["test/666"]
    assert "FAILED test/666" in summary.table()
    assert Store(cfg.store).verify().ok


@pytest.mark.slow
def test_summary_counts_chat_warns_and_never_retries_a_truncated_video(synth_vods: Path, tmp_path: Path,
                                                                       local_ray, capsys, caplog):
    from vod2chat.launch.cli import main as cli

    vods = tmp_path / "vods"
    vods.mkdir()
    (vods / "500.mkv").symlink_to(synth_vods / "500.mkv")
    (vods / "500.irc").symlink_to(synth_vods / "500.irc")
    # A chat log for another video: 10 messages an hour in, 2 malformed lines, 1 inside the 40 s.
    (vods / "501.mkv").symlink_to(synth_vods / "501.mkv")
    lines = [f"[1:00:{s:02d}] <u{s}> far away" for s in range(10)] + ["garbage line", "[x] <u> bad", "[0:00:05] <u> here"]
    lines.append("[0:00:06] <spammer> " + "long " * 100_000)  # 500 KB in one message: cut to 500 characters
    (vods / "501.irc").write_text("\n".join(lines) + "\n")
    data = (synth_vods / "502.mkv").read_bytes()
    (vods / "502.mkv").write_bytes(data[: len(data) // 2])  # truncated: probes fine, decoding ends at ~20 s
    (vods / "502.irc").symlink_to(synth_vods / "502.irc")
    (vods / "503.mkv").symlink_to(synth_vods / "500.mkv")  # no chat log: named, the others still ingest
    (vods / "504.mkv").symlink_to(synth_vods / "500.mkv")
    with gzip.open(vods / "504.json.gz", "wb") as f:  # a gzip bomb: ~40 KiB that inflates to 40 MiB
        for _ in range(40):
            f.write(b" " * (1 << 20))
    store = tmp_path / "store"
    args = ["ingest", "--store", str(store), "--streamer", "test", "--weights", "random", "--device", "cpu",
            "--num-actors", "1", "--set", "segment_s=10.0", "--set", "lookback_s=5.0", "--set", "segments_per_shard=4",
            "--set", "max_retries=2", "--set", "progress=false", "--set", "chat_max_mb=4", str(vods)]
    assert cli(args) == 1  # a VOD failed
    out = capsys.readouterr()
    assert "0 retried part(s)" in out.out  # a truncated file fails the same way on any actor
    assert "FAILED test/502: MediaError: " in out.out and "502.mkv: video ends at" in out.out
    [row] = [ln.split() for ln in out.out.splitlines() if ln.startswith("test/501 ")]
    assert row[1:] == ["2", "10", "2", "1"]  # kept, dropped outside the video, malformed, truncated
    assert "WARNING test/501 keeps 2 of 14 chat messages (10 outside the video's 40 s, 2 malformed)" in out.out
    assert "test/501 keeps 2 of 14" in caplog.text  # also logged (the console) as it happens
    assert f"UNPAIRED no chat log for video {vods / '503.mkv'}" in out.out
    assert "FAILED test/504: ChatTooLargeError: " in out.out and "504.json.gz: chat log inflates past" in out.out
    assert "VODs: 2 done" in out.out  # 500 and 501: what pairs is ingested
    assert not any(ln.startswith("WARNING test/500") for ln in out.out.splitlines())
    # store ls shows the same counts and names the VOD.
    assert cli(["store", "ls", str(store)]) == 0
    ls = capsys.readouterr().out
    [total] = [ln.split() for ln in ls.splitlines() if ln.startswith("total")]
    assert total[1] == "2" and total[4:6] == ["10", "2"]
    assert "WARNING test/501 keeps 2 of 14" in ls
    # --strict: the same VOD is a failure before any work (planning refuses it, not retried).
    from vod2chat.ingest.worker import ChatCoverageError, plan_vod

    cfg = debug_cfg(tmp_path / "strict", strict=True)
    job = VodJob("test", "501", str(vods / "501.mkv"), str(vods / "501.irc"))
    with pytest.raises(ChatCoverageError, match=r"test/501 keeps 2 of 14.*--strict.*501.irc"):
        plan_vod(job, cfg, {"video": {}, "audio": {}}, Store(cfg.store))
    assert plan_vod(dataclasses.replace(job, vod_id="500", video=str(vods / "500.mkv"), chat=str(vods / "500.irc")),
                    cfg, {"video": {}, "audio": {}}, Store(cfg.store)) is not None
