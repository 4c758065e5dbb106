"""The ground truth of a synthetic events stream (`{vod_id}.truth.json`): what a Bayes oracle needs.

Written by `synth.events.synthesize_events`, read back by evaluation and the benchmarks as
untrusted input: JSON only, every field checked; a malformed file is an error naming it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRUTH_VERSION = 1
TRUTH_SUFFIX = ".truth.json"


@dataclass(frozen=True)
class Event:
    start: float
    end: float
    type: str


@dataclass
class Truth:
    """What the generator knows about one VOD: enough for the Bayes oracle."""

    channel: str
    duration: float
    events: list[Event]
    delay_s: tuple[float, float]
    reactions_per_event: float
    chatter_per_s: float
    texts: dict[str, list[str]]  # "chatter" and every event type -> the phrases, drawn uniformly

    def to_json(self) -> dict[str, Any]:
        return {"version": TRUTH_VERSION, "kind": "events", "channel": self.channel, "duration": self.duration,
                "events": [{"start": e.start, "end": e.end, "type": e.type} for e in self.events],
                "delay_s": list(self.delay_s), "reactions_per_event": self.reactions_per_event,
                "chatter_per_s": self.chatter_per_s, "texts": self.texts}


# -- reading truth back (untrusted input) ----------------------------------------------------
MAX_TRUTH_BYTES = 16 << 20
MAX_TEXTS = 10_000


def _num(x: Any, what: str, lo: float = 0.0, hi: float = math.inf) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not lo <= x <= hi:
        raise ValueError(f"{what} must be a finite number in [{lo}, {hi}], got {x!r}")
    return float(x)


def parse_truth(obj: Any) -> Truth:
    """Validate a truth file's decoded JSON. Raises ValueError naming the first bad field."""
    if not isinstance(obj, dict) or obj.get("version") != TRUTH_VERSION or obj.get("kind") != "events":
        raise ValueError(f"not an events truth file of version {TRUTH_VERSION}")
    channel = obj.get("channel")
    if not isinstance(channel, str) or not channel:
        raise ValueError("channel must be a non-empty string")
    duration = _num(obj.get("duration"), "duration", 0.0, 1e7)
    d = obj.get("delay_s")
    if not isinstance(d, list) or len(d) != 2:
        raise ValueError("delay_s must be [min, max]")
    delay = (_num(d[0], "delay_s[0]", 0.0, 3600.0), _num(d[1], "delay_s[1]", 0.0, 3600.0))
    if not delay[1] > delay[0]:
        raise ValueError(f"delay_s must have max > min, got {d}")
    texts = obj.get("texts")
    if not isinstance(texts, dict) or not isinstance(texts.get("chatter"), list):
        raise ValueError("texts must map 'chatter' and event types to lists of phrases")
    total = 0
    for k, v in texts.items():
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
            raise ValueError(f"texts[{k!r}] must be a non-empty list of non-empty strings")
        total += len(v)
    if total > MAX_TEXTS:
        raise ValueError(f"texts hold {total} phrases, more than {MAX_TEXTS}")
    raw = obj.get("events")
    if not isinstance(raw, list):
        raise ValueError("events must be a list")
    events = []
    for i, e in enumerate(raw):
        if not isinstance(e, dict) or not isinstance(e.get("type"), str) or e["type"] not in texts or e["type"] == "chatter":
            raise ValueError(f"events[{i}] must be {{start, end, type}} with a type that has texts")
        start, end = _num(e.get("start"), f"events[{i}].start", 0, duration), _num(e.get("end"), f"events[{i}].end", 0, duration)
        if end < start or (events and start < events[-1].start):
            raise ValueError(f"events[{i}]: events must be in time order with end >= start")
        events.append(Event(start, end, e["type"]))
    return Truth(channel, duration, events, delay, _num(obj.get("reactions_per_event"), "reactions_per_event", 0, 1e6),
                 _num(obj.get("chatter_per_s"), "chatter_per_s", 0, 1e6),
                 {k: [x.strip() for x in v] for k, v in texts.items()})


def load_truth(path: str | Path) -> Truth:
    """Read and validate one truth file (JSON only: nothing in it is ever executed)."""
    p = Path(path)
    if p.stat().st_size > MAX_TRUTH_BYTES:
        raise ValueError(f"{p}: truth file larger than {MAX_TRUTH_BYTES} bytes")
    try:
        return parse_truth(json.loads(p.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{p}: bad truth file: {e}") from None


def find_truths(root: str | Path) -> dict[str, Path]:
    """`{vod_id}.truth.json` files under a directory (recursively), by VOD id."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"truth directory {root} does not exist")
    out: dict[str, Path] = {}
    for p in sorted(root.rglob(f"*{TRUTH_SUFFIX}")):
        vod = p.name[: -len(TRUTH_SUFFIX)]
        if vod in out:
            raise ValueError(f"two truth files for VOD {vod}: {out[vod]} and {p}")
        out[vod] = p
    return out
