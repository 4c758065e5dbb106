"""Smoke test of bench/ingest.py --quick: a real Twitch-like clip (H.264 2 s GOP + AAC), the
prototype's method, the ResNet-50 ceiling and the real `vod2chat ingest` command with its local
Ray, printed side by side; what each contender wrote is checked on disk."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import av
import pytest

from vod2chat.shards.store import Store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def row(out: str, name: str) -> list[str]:
    m = re.search(rf"^\| {re.escape(name)} \|(.*)\|$", out, re.M)
    assert m, f"no row {name!r} in:\n{out}"
    return [c.strip().strip("*") for c in m.group(1).split("|")]


def test_quick_bench_prints_prototype_vod2chat_and_ceiling(tmp_path: Path):
    work, cache = tmp_path / "work", tmp_path / "cache"
    res = subprocess.run([sys.executable, str(REPO / "bench" / "ingest.py"), "--quick", "--cache", str(cache),
                          "--work", str(work)], capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    out = res.stdout
    speeds = [float(x) for x in row(out, "VOD-seconds per wall-second")]
    assert len(speeds) == 3 and all(s > 0 for s in speeds)  # prototype, vod2chat, ceiling
    ratio = float(row(out, "vs prototype")[1].rstrip("x"))
    assert ratio == pytest.approx(speeds[1] / speeds[0], rel=0.05, abs=0.011)  # both printed to 2 decimals
    for stage in ("decode video", "ResNet-50", "decode audio", "VGGish"):
        proto, ours, _ = row(out, stage)
        assert float(proto) >= 0 and (ours.startswith("in decode") or float(ours) >= 0)
    # The input is what the bench claims: H.264 with 2 s keyframe spacing and AAC.
    [video] = [p for p in cache.rglob("*.mp4") if not p.name.startswith(".")]  # not the encoded loop
    with av.open(str(video)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.codec_context.name, a.codec_context.name, v.height, round(float(v.average_rate))) == ("h264", "aac", 480, 30)
        keys = [float(p.pts * v.time_base) for p in c.demux(v) if p.is_keyframe and p.pts is not None]
    assert keys[:3] == [0.0, 2.0, 4.0]
    # vod2chat committed the whole VOD; the prototype wrote one .pt per chat line of its span.
    store = Store(str(work / "store-480p30"))
    assert store.verify().ok
    [rec] = list(store.records())
    assert rec.duration == pytest.approx(6.0, abs=0.1) and rec.fingerprints["video"]["precision"]
    files = int(re.search(r"prototype: .* (\d+) files", out).group(1))
    assert files > 0 and len(list((work / "proto-480p30").glob("*.pt"))) == files
