"""A tiny store whose chat is predictable from its features, written straight to real shards
(no encoders): trainer tests run in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vod2chat.shards.schema import Sample, SegmentMeta, VodRecord, sample_key
from vod2chat.shards.store import Store

WORDS = ["red", "green", "blue", "loud", "quiet", "pog"]
FP = {"video": {"model": "fake", "fps": 1.0}, "audio": {"model": "fake"}}


def make_store(root: Path, vods: int = 4, segments: int = 6, seg_s: float = 10.0, seed: int = 0,
               streamer: str = "fake", words: list[str] = WORDS, first_vod: int = 1000) -> Store:
    """Each second shows one of len(words) scenes; a message at t names the scene shown at t."""
    rng = np.random.default_rng(seed)
    store = Store(str(root))
    protos = rng.standard_normal((len(words), 2048)).astype(np.float32)
    aprotos = rng.standard_normal((len(words), 128)).astype(np.float32)
    for v in range(vods):
        vod = str(first_vod + v)
        dur = segments * seg_s
        scenes = rng.integers(0, len(words), size=int(dur) + 1)
        shards = []
        for k in range(segments // 2):
            samples = []
            for seg in (2 * k, 2 * k + 1):
                start, end = seg * seg_s, (seg + 1) * seg_s
                t0 = max(0.0, start - 5.0)
                vt = np.arange(int(t0), int(end))
                video = (protos[scenes[vt]] + 0.1 * rng.standard_normal((len(vt), 2048))).astype(np.float16)
                na = int((end - t0) / 0.96)
                at = t0 + np.arange(na) * 0.96
                audio = aprotos[scenes[at.astype(int)]].astype(np.float16)
                ts = np.sort(rng.uniform(start + 0.5, end - 0.01, size=4))
                msgs = [{"t": float(t), "user": f"u{int(t) % 5}", "text": f"{words[scenes[int(t) - 1]]} {words[scenes[int(t) - 1]]} wow"}
                        for t in ts]
                samples.append(Sample(
                    key=sample_key(streamer, vod, seg), video=video, audio=audio,
                    chat={"context": [], "messages": msgs},
                    meta=SegmentMeta(streamer=streamer, vod_id=vod, segment=seg, start=start, end=end, lookback=5.0,
                                     video_t0=float(vt[0]), fps=1.0, audio_t0=t0, audio_hop=0.96,
                                     audio_win=0.96).as_dict(),
                ))
            shards.append(store.write_shard(store.shard_rel(streamer, vod, k), samples))
        store.commit_record(VodRecord(streamer=streamer, vod_id=vod, duration=dur, segments=segments,
                                      messages=sum(s.messages for s in shards), fingerprints=FP, shards=shards))
    return store
