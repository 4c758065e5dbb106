"""The shard store and reader on real tar shards: commit protocol, verify/gc, splits."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from vod2chat.shards.reader import Selection, ShardStream, read_store, select_records, shard_urls, shard_weights, split_of
from vod2chat.shards.schema import Sample, SchemaError, VodRecord, decode_sample, encode_sample, sample_key
from vod2chat.shards.store import Store, StoreError

FP = {"video": {"model": "resnet50", "weights": "random:seed=0", "fps": 1.0}, "audio": {"model": "vggish"}}


def make_samples(streamer: str, vod: str, first: int, n: int) -> list[Sample]:
    rng = np.random.default_rng(first)
    out = []
    for seg in range(first, first + n):
        out.append(Sample(
            key=sample_key(streamer, vod, seg),
            video=rng.standard_normal((10, 2048)).astype(np.float16),
            audio=rng.standard_normal((10, 128)).astype(np.float16),
            chat={"context": [], "messages": [{"t": seg * 10.0 + 1, "user": "u", "text": f"msg {seg}"}]},
            meta={"streamer": streamer, "vod_id": vod, "segment": seg, "start": seg * 10.0, "end": seg * 10.0 + 10,
                  "video_t0": seg * 10.0, "fps": 1.0, "audio_t0": seg * 10.0, "audio_hop": 0.96, "audio_win": 0.96},
        ))
    return out


def add_vod(store: Store, streamer: str, vod: str, shards: int = 2, per: int = 3) -> VodRecord:
    infos = [store.write_shard(store.shard_rel(streamer, vod, k), make_samples(streamer, vod, k * per, per))
             for k in range(shards)]
    rec = VodRecord(streamer=streamer, vod_id=vod, duration=shards * per * 10.0, segments=shards * per,
                    messages=sum(i.messages for i in infos), fingerprints=FP, shards=infos)
    store.commit_record(rec)
    return rec


def test_schema_roundtrip_and_errors():
    s = make_samples("tsoding", "123", 0, 1)[0]
    raw = encode_sample(s)
    back = decode_sample(raw)
    assert back.key == "tsoding__123__000000"
    assert back.video.dtype == np.float16 and back.video.shape == (10, 2048)
    np.testing.assert_array_equal(back.audio, s.audio)
    assert back.chat == s.chat and back.meta["schema"] == 1
    with pytest.raises(SchemaError, match="dots"):
        sample_key("ts.oding", "1", 0)
    bad = dict(raw)
    del bad["audio.npy"]
    with pytest.raises(SchemaError, match="lacks"):
        decode_sample(bad)
    with pytest.raises(SchemaError, match=r"\[T, 2048\]"):
        encode_sample(Sample("a__b__000000", np.zeros((3, 5), np.float16), s.audio, s.chat, s.meta))


def test_commit_verify_and_read(tmp_path: Path):
    store = Store(str(tmp_path / "store"))
    add_vod(store, "tsoding", "111")
    add_vod(store, "nymn", "222", shards=1)
    assert sorted(p for p in store.shard_files()) == [
        "shards/nymn/222-00000.tar", "shards/tsoding/111-00000.tar", "shards/tsoding/111-00001.tar"]
    # Shards are real tars that plain tarfile reads, members named key.ext.
    with tarfile.open(tmp_path / "store/shards/tsoding/111-00000.tar") as tf:
        assert "tsoding__111__000000.video.npy" in tf.getnames()
    rep = store.verify()
    assert rep.ok and rep.vods == 2 and rep.shards == 3 and rep.orphans == []
    summary = store.summary()
    assert summary["tsoding"]["vods"] == 1 and summary["tsoding"]["messages"] == 6
    keys = sorted(s.key for s in read_store(store))
    assert len(keys) == 9 and keys[0] == "nymn__222__000000"
    assert [r.vod_id for r in select_records(store, Selection(streamers=["nymn"]))] == ["222"]


def test_verify_finds_corruption_and_gc_removes_orphans(tmp_path: Path):
    store = Store(str(tmp_path / "store"))
    add_vod(store, "tsoding", "111")
    # A half-written shard (a crash before rename) and a shard without a record.
    tmp = tmp_path / "store/shards/tsoding/.tmp-dead-111-00007.tar"
    tmp.write_bytes(b"half a tar")
    store.write_shard(store.shard_rel("tsoding", "999", 0), make_samples("tsoding", "999", 0, 2))
    rep = store.verify()
    assert rep.ok and set(rep.orphans) == {"shards/tsoding/.tmp-dead-111-00007.tar", "shards/tsoding/999-00000.tar"}
    assert store.gc(min_age_s=3600) == []  # young orphans may belong to a running ingest
    assert sorted(store.gc(min_age_s=0)) == sorted(rep.orphans)
    assert store.verify().orphans == [] and store.verify().ok
    # Flip one byte of a committed shard: verify names it.
    p = tmp_path / "store/shards/tsoding/111-00001.tar"
    b = bytearray(p.read_bytes())
    b[700] ^= 0xFF
    p.write_bytes(bytes(b))
    rep = store.verify()
    assert not rep.ok and "111-00001.tar: sha256 mismatch" in rep.problems[0]


def test_records_are_the_truth_and_fingerprints_never_mix(tmp_path: Path):
    store = Store(str(tmp_path / "store"))
    # Shards without a record are invisible to readers.
    store.write_shard(store.shard_rel("tsoding", "111", 0), make_samples("tsoding", "111", 0, 2))
    assert list(read_store(store)) == []
    add_vod(store, "tsoding", "222", shards=1)
    store.check_fingerprints(FP)
    other = json.loads(json.dumps(FP))
    other["video"]["weights"] = "sha256:abcdef"
    with pytest.raises(StoreError, match=r"(?s)random:seed=0.*sha256:abcdef"):
        store.check_fingerprints(other)
    (tmp_path / "store/vods/tsoding/333.json").write_text("{not json")
    with pytest.raises(StoreError, match="333.json"):
        list(store.records())


@pytest.mark.parametrize("shards,per", [(4, 3), (1, 8)])  # shard-level split, and sample-level fallback
def test_two_ranks_see_disjoint_data_whose_union_is_everything(tmp_path: Path, shards: int, per: int):
    store = Store(str(tmp_path / "store"))
    add_vod(store, "a", "1", shards=shards, per=per)
    urls = shard_urls(store, select_records(store, Selection()))
    seen = [[s.key for s in ShardStream(urls, rank=r, world_size=2, seed=3, buffer=4)] for r in range(2)]
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(s.key for s in read_store(store))
    assert len(seen[0]) and len(seen[1])
    # Deterministic for a seed, different for another.
    again = [s.key for s in ShardStream(urls, rank=0, world_size=2, seed=3, buffer=4)]
    assert again == seen[0]


def test_resampled_stream_is_endless_and_seeded(tmp_path: Path):
    store = Store(str(tmp_path / "store"))
    add_vod(store, "a", "1", shards=2, per=2)
    urls = shard_urls(store, select_records(store, Selection()))

    def take(seed: int, n: int = 20) -> list[str]:
        it = iter(ShardStream(urls, seed=seed, resample=True))
        return [next(it).key for _ in range(n)]

    assert take(1) == take(1) and len(set(take(1))) == 4


def test_corrupt_shard_raises_unless_skipping(tmp_path: Path):
    store = Store(str(tmp_path / "store"))
    add_vod(store, "a", "1", shards=2, per=2)
    (tmp_path / "store/shards/a/1-00000.tar").write_bytes(b"\0garbage" * 100)
    urls = shard_urls(store, select_records(store, Selection()))
    with pytest.raises(Exception):
        list(ShardStream(urls, shuffle_shards=False))
    assert len(list(ShardStream(urls, shuffle_shards=False, skip_errors=True))) == 2


def test_splits_are_by_vod_and_stable():
    sel = Selection(val_fraction=0.2, test_fraction=0.2)
    splits = [split_of("s", str(v), sel) for v in range(500)]
    assert {"train", "val", "test"} == set(splits)
    assert 0.1 < splits.count("test") / 500 < 0.3
    assert splits == [split_of("s", str(v), sel) for v in range(500)]


def test_streamer_weights_balance_a_huge_channel(tmp_path: Path):
    store = Store(str(tmp_path / "store"))
    add_vod(store, "huge", "1", shards=6, per=1)
    add_vod(store, "huge", "2", shards=6, per=1)
    add_vod(store, "small", "3", shards=1, per=1)
    recs = select_records(store, Selection())
    urls = shard_urls(store, recs)

    def share_small(weights) -> float:
        it = iter(ShardStream(urls, seed=0, resample=True, weights=weights))
        keys = [next(it).key for _ in range(600)]
        return sum(k.startswith("small") for k in keys) / len(keys)

    assert share_small(None) < 0.15  # by data size: 1 shard in 13
    assert 0.4 < share_small(shard_weights(recs, {"huge": 1.0, "small": 1.0})) < 0.6


def test_segment_meta_and_chat_block_are_the_only_way_in_and_out(tmp_path):
    """Typed records round-trip through a real shard; a meta.json without the contract's fields is refused."""
    import json

    import numpy as np
    import pytest

    from vod2chat.shards.reader import read_chat
    from vod2chat.shards.schema import ChatBlock, Sample, SchemaError, SegmentMeta, decode_sample, encode_sample, sample_key
    from vod2chat.shards.store import Store

    meta = SegmentMeta(streamer="s", vod_id="1", segment=0, start=0.0, end=10.0, lookback=5.0, video_t0=-5.0,
                       fps=1.0, audio_t0=-4.8, audio_hop=0.96, audio_win=0.96, fingerprints={"video": "x"})
    chat = ChatBlock(context=[{"t": -1.0, "user": "a", "text": "before"}], messages=[{"t": 2.0, "user": "b", "text": "hi"}])
    sample = Sample(sample_key("s", "1", 0), np.zeros((15, 2048), np.float16), np.zeros((15, 128), np.float16),
                    chat.as_dict(), meta.as_dict())
    store = Store(str(tmp_path / "store"))
    info = store.write_shard(store.shard_rel("s", "1", 0), [sample])
    back = decode_sample(encode_sample(sample))
    assert back.segment_meta() == meta and back.chat_block() == chat
    assert list(read_chat([store.full_url(info.path)])) == [chat.as_dict()]  # chat without the features
    raw = encode_sample(sample)
    raw["meta.json"] = json.dumps({"schema": 1, "fps": 1.0}).encode()
    with pytest.raises(SchemaError, match=r"meta.json lacks \['streamer'"):
        decode_sample(raw)
    raw = encode_sample(sample)
    raw["chat.json"] = b'["not", "a", "block"]'
    with pytest.raises(SchemaError, match="chat.json must be"):
        decode_sample(raw)


def test_store_operations_replace_hand_rolled_ones(tmp_path):
    """Next shard number past a record's shards; commit_vod removes a replaced record's shards only after the commit."""
    from store_factory import make_store
    from vod2chat.shards.store import Store

    store = make_store(tmp_path / "store", vods=1, segments=2)
    rec = store.read_record("fake", "1000")
    assert Store.next_shard_index(None) == 0
    assert Store.next_shard_index(rec) == 1 + max(int(sh.path[-9:-4]) for sh in rec.shards)
    old_paths = [sh.path for sh in rec.shards]
    k = Store.next_shard_index(rec)
    new = store.write_shard(store.shard_rel("fake", "1000", k), [])
    store.commit_vod(dataclasses.replace(rec, shards=[new]))
    assert [sh.path for sh in store.read_record("fake", "1000").shards] == [new.path]
    assert not any((tmp_path / "store" / p).exists() for p in old_paths) and (tmp_path / "store" / new.path).exists()


# A record as `vod2chat ingest` writes it today (key order included), with a field no version knows.
INGESTED = {
    "schema": 1, "streamer": "fake", "vod_id": "1000", "duration": 12.5, "segments": 2, "messages": 7,
    "messages_dropped": 1, "chat_format": "tcd-irc", "chat_skipped": 0, "chat_skipped_lines": [],
    "fingerprints": FP, "segment_s": 10.0, "lookback_s": 5.0, "fps": 1.0, "context_messages": 8,
    "segments_per_shard": 4, "fingerprint_ids": {"video": "v1", "audio": "a1"}, "streams_requested": [None, None],
    "sources": {"video": {"path": "/v/1000.mp4", "hash": "h", "video_stream": 0, "audio_stream": 1}},
    "from_the_future": {"x": 1}, "settings_id": "0123456789abcdef", "audio_hop": 0.96, "audio_win": 0.96,
    "shards": [{"path": "shards/fake/1000-00000.tar", "samples": 2, "bytes": 4096, "sha256": "ab" * 32,
                "messages": 7, "shard_note": "kept"}],
    "created": "2026-01-01T00:00:00Z", "ingest_wall_s": 3.2,
}


def test_vod_record_round_trips_the_on_disk_json(tmp_path: Path):
    rec = VodRecord.from_json(json.loads(json.dumps(INGESTED)), "r")
    assert rec.duration == 12.5 and rec.shards[0].sha256 == "ab" * 32 and rec.setting("lookback_s") == 5.0
    assert rec.settings["from_the_future"] == {"x": 1} and rec.shards[0].extra == {"shard_note": "kept"}
    assert json.dumps(rec.to_json()) == json.dumps(INGESTED)  # same keys, values and order
    store = Store(str(tmp_path / "store"))
    store.commit_record(rec)
    assert json.loads((tmp_path / "store/vods/fake/1000.json").read_text()) == INGESTED
    assert store.read_record("fake", "1000") == rec


def test_an_old_format_record_still_reads_and_is_rewritten_unchanged(tmp_path: Path):
    """An older version wrote no chat counts, settings or per-shard checksums/message counts."""
    store = Store(str(tmp_path / "store"))
    infos = [store.write_shard(store.shard_rel("old", "1", 0), make_samples("old", "1", 0, 2))]
    old = {"streamer": "old", "vod_id": "1", "duration": 20.0, "segments": 2, "messages": infos[0].messages,
           "fingerprints": FP, "shards": [{"path": infos[0].path, "samples": 2, "bytes": infos[0].bytes}]}
    (tmp_path / "store/vods/old").mkdir(parents=True)
    (tmp_path / "store/vods/old/1.json").write_text(json.dumps(old))
    [rec] = store.records()
    assert rec.shards[0].sha256 is None and rec.shards[0].messages is None and rec.settings_id is None
    assert rec.to_json() == old  # nothing invented on a rewrite
    assert store.summary()["old"]["messages"] == infos[0].messages and store.summary()["old"]["dropped"] == 0
    assert shard_urls(store, [rec]) == [store.full_url(infos[0].path)]
    from vod2chat.trainer.config import DataConfig
    from vod2chat.trainer.stream import pin_selection
    [pinned] = pin_selection(DataConfig(store=store.url, val_fraction=0, test_fraction=0, window_s=5.0,
                                        context_messages=0))
    assert pinned.sha256 == "" and pinned.messages == 1  # unknown count: the shard is still drawn


@pytest.mark.parametrize("bad, field", [
    ({"duration": "long"}, "'duration' must be float"),
    ({"segments": True}, "'segments' must be int"),
    ({"fingerprints": ["resnet50"]}, "'fingerprints' must be dict"),
    ({"messages": None}, "lacks 'messages'"),
    ({"lookback_s": "5"}, "'lookback_s' must be float"),
    ({"shards": [{**INGESTED["shards"][0], "bytes": "4096"}]}, "shard shards/fake/1000-00000.tar.*'bytes' must be int"),
    ({"shards": [{k: v for k, v in INGESTED["shards"][0].items() if k != "samples"}]}, "lacks 'samples'"),
])
def test_a_record_with_a_wrong_type_is_refused_naming_it(tmp_path: Path, bad: dict, field: str):
    (tmp_path / "store/vods/fake").mkdir(parents=True)
    (tmp_path / "store/vods/fake/1000.json").write_text(json.dumps({**INGESTED, **bad}))
    with pytest.raises(StoreError, match=f"vods/fake/1000.json.*{field}"):
        list(Store(str(tmp_path / "store")).records())
    with pytest.raises(SchemaError, match=field):
        VodRecord.from_json({**INGESTED, **bad}, "r")
