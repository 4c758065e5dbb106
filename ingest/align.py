"""Time alignment: which feature rows and chat messages belong to which segment.

Features live on global grids so that neighbouring segments and shards agree exactly:
video row k is the frame shown at k / fps; audio row j is the VGGish window
[j * hop, j * hop + win) with hop = win = 0.96 s (15360 samples at 16 kHz). A row exists only
if it lies inside the VOD. Integer arithmetic (frames, samples) avoids float drift over hours.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Sequence

AUDIO_SR = 16000
AUDIO_HOP_SAMPLES = 15360  # 0.96 s: VGGish's natural, non-overlapping framing
AUDIO_HOP = AUDIO_HOP_SAMPLES / AUDIO_SR


@dataclass(frozen=True)
class Segment:
    index: int
    start: float
    end: float
    v0: int  # video rows [v0, v1)
    v1: int
    a0: int  # audio rows [a0, a1)
    a1: int


def n_video_rows(duration: float, fps: float) -> int:
    return max(0, math.ceil(duration * fps - 1e-9))


def n_audio_rows(duration: float) -> int:
    return max(0, int(math.floor(duration * AUDIO_SR + 1e-6)) // AUDIO_HOP_SAMPLES)


def plan_segments(duration: float, segment_s: float, lookback_s: float, fps: float) -> list[Segment]:
    nv, na = n_video_rows(duration, fps), n_audio_rows(duration)
    out = []
    for i in range(max(1, math.ceil(duration / segment_s - 1e-9))):
        start, end = i * segment_s, min((i + 1) * segment_s, duration)
        feat_start = max(0.0, start - lookback_s)
        v0 = min(nv, math.ceil(feat_start * fps - 1e-9))
        v1 = min(nv, math.ceil(end * fps - 1e-9))
        a0 = min(na, math.ceil(feat_start * AUDIO_SR / AUDIO_HOP_SAMPLES - 1e-9))
        a1 = min(na, math.ceil(end * AUDIO_SR / AUDIO_HOP_SAMPLES - 1e-9))
        out.append(Segment(i, start, end, v0, v1, a0, a1))
    return out


def plan_parts(segments: Sequence[Segment], per_part: int) -> list[list[Segment]]:
    """Consecutive segments grouped into parts: one part = one shard = one unit of work."""
    return [list(segments[i : i + per_part]) for i in range(0, len(segments), per_part)]


def chat_for_segment(
    times: Sequence[float], messages: Sequence[Any], seg: Segment, last: bool, context: int
) -> dict[str, list[dict[str, Any]]]:
    """Messages in [start, end) (the last segment keeps those up to its end inclusive), plus
    the `context` messages just before start. `times` is the sorted list of message times."""
    lo = bisect.bisect_left(times, seg.start)
    hi = bisect.bisect_right(times, seg.end) if last else bisect.bisect_left(times, seg.end)

    def js(ms: Sequence[Any]) -> list[dict[str, Any]]:
        return [{"t": round(m.t, 3), "user": m.user, "text": m.text} for m in ms]

    return {"context": js(messages[max(0, lo - context) : lo]), "messages": js(messages[lo:hi])}
