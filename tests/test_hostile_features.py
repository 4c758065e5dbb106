"""Non-finite or malformed feature arrays (issue 18, findings 1 and 6): the ingest worker never
commits them, the reader refuses them naming the shard and member, `store verify` finds them and
names an unreadable tar instead of stopping at it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import nan_video, npy, reseal, rewrite_shard
from store_factory import make_store
from vod2chat.shards.schema import SchemaError, decode_sample, encode_sample
from vod2chat.shards.store import Store

REPO = Path(__file__).resolve().parents[1]


def raw_sample(video: np.ndarray | None = None, audio: np.ndarray | None = None) -> dict:
    """A real encoded sample from the factory's store, with its arrays replaced."""
    from vod2chat.shards.schema import Sample, SegmentMeta

    s = Sample("fake__1000__000000", np.zeros((15, 2048), np.float16), np.zeros((15, 128), np.float16),
               {"context": [], "messages": []},
               SegmentMeta(streamer="fake", vod_id="1000", segment=0, start=0.0, end=10.0, lookback=5.0, video_t0=0.0,
                           fps=1.0, audio_t0=0.0, audio_hop=0.96, audio_win=0.96).as_dict())
    raw = {**encode_sample(s), "__url__": "shards/fake/1000-00000.tar"}
    if video is not None:
        raw["video.npy"] = npy(video)
    if audio is not None:
        raw["audio.npy"] = npy(audio)
    return raw


def with_nan(shape, dtype=np.float16, value=np.nan) -> np.ndarray:
    a = np.ones(shape, dtype)
    a[3, 7] = value
    return a


@pytest.mark.parametrize("video, audio, message", [
    (with_nan((15, 2048)), None, r"video\.npy holds 1 NaN/Inf values"),
    (with_nan((15, 2048), value=np.inf), None, r"video\.npy holds 1 NaN/Inf values"),
    (None, with_nan((15, 128)), r"audio\.npy holds 1 NaN/Inf values"),
    (np.ones((15, 2048), np.int8), None, r"video\.npy is int8, the contract stores float16"),
    (None, np.ones((15, 128), np.float32), r"audio\.npy is float32, the contract stores float16"),
    (np.ones((0, 2048), np.float16), None, r"video\.npy has 0 rows"),
    (np.ones((15, 1024), np.float16), None, r"video\.npy has shape \[15, 1024\], the contract's is \[rows, 2048\]"),
    (None, np.ones((15,), np.float16), r"audio\.npy has shape \[15\]"),
])
def test_decode_refuses_bad_features_naming_shard_and_member(video, audio, message):
    with pytest.raises(SchemaError, match=r"sample fake__1000__000000 in shards/fake/1000-00000\.tar: " + message):
        decode_sample(raw_sample(video, audio))
    decode_sample(raw_sample())  # the intact sample decodes


def test_store_verify_finds_nan_features_and_names_a_bad_tar_then_goes_on(tmp_path: Path, capsys):
    from vod2chat.launch.cli import main as cli

    make_store(tmp_path / "store")
    store = tmp_path / "store"
    shards = sorted(str(p.relative_to(store)) for p in (store / "shards/fake").glob("*.tar"))
    rewrite_shard(store, shards[0], nan_video)  # all NaN, record resealed
    int8 = lambda name, data: npy(np.ones((15, 2048), np.int8)) if name.endswith(".video.npy") else data  # noqa: E731
    rewrite_shard(store, shards[3], int8)
    tar = store / shards[5]
    tar.write_bytes(tar.read_bytes()[:700])  # a truncated tar, record resealed: only its tar reading can tell
    reseal(store, shards[5])
    assert cli(["store", "verify", str(store)]) == 1
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
    assert any(shards[0] in p and "video.npy holds" in p and "NaN/Inf" in p for p in problems), out
    assert any(shards[3] in p and "video.npy is int8" in p for p in problems), out
    assert any(shards[5] in p and "not a readable tar" in p for p in problems), out
    # it went on past the bad tar: every shard was checked
    assert f"4 VODs, {len(list((store / 'shards/fake').glob('*.tar')))} shards checked" in out
    assert not [p for p in problems if not any(s in p for s in (shards[0], shards[3], shards[5]))]


def nan_weights(path: Path) -> Path:
    """A ResNet-50 weights file whose last BatchNorm scale is NaN (a damaged download, a bad
    fine-tune): every feature it gives is NaN."""
    import torch
    import torchvision

    sd = torchvision.models.resnet50(weights=None).state_dict()
    sd["layer4.2.bn3.weight"][:] = float("nan")
    torch.save(sd, path)
    return path


def test_ingest_never_commits_non_finite_features(tmp_path: Path):
    from vod2chat.config import load_config
    from vod2chat.ingest.config import IngestConfig
    from vod2chat.synth.scenes import synthesize
    from helpers import pair_inputs
    from vod2chat.ingest.features import ingest_encoders
    from vod2chat.ingest.worker import NonFiniteFeatures, ingest_vod

    synthesize(tmp_path / "vods", seed=3, duration=12.0, vod_id="7001")
    cfg = load_config(IngestConfig, REPO / "launch/ingest_debug.toml", [
        f"store={tmp_path / 'store'}", "streamer=nan", "progress=false",
        f"video_weights={nan_weights(tmp_path / 'resnet50-nan.pth')}"])
    store = Store(cfg.store)
    (job,) = pair_inputs([str(tmp_path / "vods")], "nan")
    with pytest.raises(NonFiniteFeatures, match=r"nan/7001 part 0: the video encoder gave NaN/Inf .* nothing of "
                                                r"this VOD is committed"):
        ingest_vod(job, store, ingest_encoders(cfg), cfg)
    assert store.read_record("nan", "7001") is None
    assert not [p for p in store.shard_files() if p.endswith(".tar")]  # no shard was written either
