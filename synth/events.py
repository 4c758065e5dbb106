"""Synthetic streams closer to Twitch: brief events, delayed reaction bursts, several channels.

    vod2chat synth --kind events --channel forest --seed 1 --out vods/forest
    -> vods/forest/{vod_id}.mkv, {vod_id}.irc and {vod_id}.truth.json (the ground truth)

The picture is a background that tells nothing (a slowly drifting colour, a grey square
bouncing across it) and the sound a quiet hiss; now and then, for 1 to 2 s, something happens
on screen (a white flash, a glitch of coloured bars, a blackout) or in the audio (a ding, a
boom, a chirp). Each event draws a Poisson number of reactions spread uniformly 2 to 8 s after
its start; chatter goes on at a steady rate in between. Channels share the event types but
not the words: each has its own chatter and its own phrases for every event, so one model
serving both must tell the communities apart.

The truth file holds what a Bayes oracle needs (inference/oracle.py): the event timeline, the
reaction delay range and mean count, the chatter rate and the channel's texts per source. A
message at time t then comes from the chatter or from event e with probabilities proportional
to their rates at t, and its text is uniform over that source's phrases. Truth files are read
with `load_truth`: JSON only, every field checked; a malformed one is an error naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vod2chat.ingest.chat import Message, write_irc
from vod2chat.synth.scenes import AUDIO_RATE, _NAME_A, _NAME_B, _bounce, encode_av
from vod2chat.synth.truth import TRUTH_SUFFIX, Event, Truth

VIDEO_EVENTS = ("flash", "glitch", "blackout")
AUDIO_EVENTS = ("ding", "boom", "chirp")
EVENT_TYPES = VIDEO_EVENTS + AUDIO_EVENTS
EVENT_S = (1.0, 2.0)  # how long an event lasts
GAP_S = (3.0, 10.0)  # from one event's end to the next one's start
DELAY_S = (2.0, 8.0)  # reactions come this long after an event's start (uniform)
REACTIONS_PER_EVENT = 4.0  # Poisson mean
CHATTER_PER_S = 0.5

# Each community's words. Phrases are distinct across channels and sources, so a text names
# its channel and its source.
CHANNELS: dict[str, dict[str, list[str]]] = {
    "forest": {
        "chatter": ["hi chat", "lol", "what game is this", "gg", "hello from germany", "first time here",
                    "nice", "W stream", "how long is the stream", "good morning", "love this", "based",
                    "what did I miss", "hype", "can you say hi", "new sub here"],
        "flash": ["FLASHBANG", "my eyes", "who turned the lights on", "blinded", "sunglasses on"],
        "glitch": ["stream is glitching", "GLITCH", "my gpu died", "pixels everywhere", "buffering?"],
        "blackout": ["stream went black", "BLACKOUT", "is it dead", "lights out", "who turned it off"],
        "ding": ["DING", "microwave done", "ding ding", "notification sound", "that ding"],
        "boom": ["BOOM", "explosion", "my subwoofer", "that was loud", "earthquake"],
        "chirp": ["birds chirping", "CHIRP", "tweet tweet", "that chirp", "bird in the room"],
    },
    "harbor": {
        "chatter": ["yo", "KEKW", "chat is this real", "Kappa", "o7", "any plans for today", "monkaS",
                    "this is fine", "PogChamp", "true", "no way", "LETS GO", "Sadge", "classic",
                    "ez", "catJAM"],
        "flash": ["OMEGALUL bright", "flashed KEKW", "retina gone", "white screen Kappa", "FLASH WARNING"],
        "glitch": ["glitch pog", "BROKEN STREAM", "wifi moment", "corrupted KEKW", "static monkaS"],
        "blackout": ["black screen Sadge", "DEAD STREAM", "power cut", "screen off KEKW", "nothing to see"],
        "ding": ["dinged Pog", "DING DONG", "bell moment", "ring ring", "doorbell monkaS"],
        "boom": ["BOOMED", "bass KEKW", "nuke incoming", "rip headphones", "KABOOM"],
        "chirp": ["chirp KEKW", "BIRD POG", "seagull moment", "squeak", "tiny bird Kappa"],
    },
}


@dataclass
class EventStream:
    truth: Truth
    messages: list[Message]
    seed: int


# -- the plan -----------------------------------------------------------------------------
def plan_events(rng: np.random.Generator, duration: float) -> list[Event]:
    events, t = [], float(rng.uniform(*GAP_S))
    while True:
        start = round(t, 3)
        end = round(start + float(rng.uniform(*EVENT_S)), 3)
        if end > duration:
            return events
        events.append(Event(start, end, str(rng.choice(EVENT_TYPES))))
        t = end + float(rng.uniform(*GAP_S))


def plan_event_stream(seed: int = 0, duration: float = 120.0, channel: str = "forest") -> EventStream:
    """The timeline and the chat of an events stream, without writing anything."""
    if not duration > 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}: choose from {sorted(CHANNELS)}")
    rng = np.random.default_rng([seed, sorted(CHANNELS).index(channel)])
    texts = CHANNELS[channel]
    events = plan_events(rng, duration)
    users = [f"{a}_{b}{n}" for a in _NAME_A for b in _NAME_B for n in (3, 11, 77)]
    users = [str(u) for u in rng.choice(users, 60, replace=False)]
    out: list[Message] = []

    def say(t: float, text: str) -> None:
        if 0 <= t < duration:
            out.append(Message(round(t, 3), users[int(rng.integers(len(users)))], text))

    t = float(rng.exponential(1 / CHATTER_PER_S))
    while t < duration:
        say(t, str(rng.choice(texts["chatter"])))
        t += float(rng.exponential(1 / CHATTER_PER_S))
    for e in events:
        for _ in range(int(rng.poisson(REACTIONS_PER_EVENT))):
            say(e.start + float(rng.uniform(*DELAY_S)), str(rng.choice(texts[e.type])))
    truth = Truth(channel, float(duration), events, DELAY_S, REACTIONS_PER_EVENT, CHATTER_PER_S,
                  {k: list(v) for k, v in texts.items()})
    return EventStream(truth, sorted(out, key=lambda m: m.t), seed)


# -- rendering ------------------------------------------------------------------------------
def _active(events: list[Event], t: np.ndarray, kinds: tuple[str, ...]) -> np.ndarray:
    """Index of the event of `kinds` under way at each time t, or -1."""
    starts = np.asarray([e.start for e in events] or [np.inf])
    i = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, None)
    ok = (t >= starts[i]) & (t < np.asarray([e.end for e in events] or [-np.inf])[i])
    ok &= np.isin(np.asarray([e.type for e in events] or [""])[i], kinds)
    return np.where(ok, i, -1)


def render_event_frame(stream: EventStream, t: float, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    idx = int(_active(stream.truth.events, np.asarray([t]), VIDEO_EVENTS)[0])
    kind = stream.truth.events[idx].type if idx >= 0 else None
    if kind == "flash":
        return np.full((h, w, 3), 250, np.uint8)
    if kind == "blackout":
        return np.full((h, w, 3), 5, np.uint8)
    img = np.empty((h, w, 3), np.uint8)
    # A mid-tone colour drifting slowly round the hue circle: it changes, but tells nothing.
    phase = 2 * np.pi * (t / 97.0 + stream.seed * 0.13)
    img[:] = [int(128 + 60 * math.sin(phase + k * 2.1)) for k in range(3)]
    side = max(2, h // 4)
    x = int(_bounce(0.3 + 0.21 * t) * (w - side))
    y = int(_bounce(0.6 + 0.17 * t) * (h - side))
    img[y:y + side, x:x + side] = 90
    if kind == "glitch":  # random coloured bars, new ones every frame
        rng = np.random.default_rng([stream.seed, idx, int(round(t * 1000))])
        rows = rng.integers(0, h, 6)
        for r in rows:
            img[r:r + h // 10] = rng.integers(0, 256, 3)
        img[:, :: 4] = rng.integers(0, 256, (w + 3) // 4 * 3).reshape(-1, 3)
    return img


def render_event_audio(stream: EventStream, first: int, n: int) -> np.ndarray:
    """A quiet hiss (seeded per sample block, so any slice renders the same) plus the audio events."""
    t = (first + np.arange(n)) / AUDIO_RATE
    block = 4096
    out = np.empty(n, np.float32)
    for b in range(first // block, (first + n - 1) // block + 1):
        noise = np.random.default_rng([stream.seed, 7, b]).standard_normal(block).astype(np.float32)
        lo, hi = max(first, b * block), min(first + n, (b + 1) * block)
        out[lo - first:hi - first] = noise[lo - b * block:hi - b * block]
    out *= 0.02 * (1 + 0.5 * np.sin(2 * np.pi * t / 41.0))
    idx = _active(stream.truth.events, t, AUDIO_EVENTS)
    for i in np.unique(idx[idx >= 0]):
        e = stream.truth.events[i]
        sel = idx == i
        since = t[sel] - e.start
        if e.type == "ding":  # a bell struck twice a second
            env = np.exp(-(since % 0.5) * 8)
            sig = 0.5 * env * np.sin(2 * np.pi * 1320 * since)
        elif e.type == "boom":  # a low rumble with overtones, decaying
            # The overtones matter: VGGish's log-mel starts at 125 Hz, so a 55 + 82 Hz rumble alone
            # (as first written) was all but silent to the audio encoder while the truth, and so
            # the oracle, had it. A real explosion is broadband.
            sig = 0.7 * np.exp(-since * 1.5) * (np.sin(2 * np.pi * 55 * since) + 0.5 * np.sin(2 * np.pi * 82 * since)
                                                + 0.6 * np.sin(2 * np.pi * 165 * since)
                                                + 0.4 * np.sin(2 * np.pi * 247 * since))
        else:  # chirp: a rising sweep four times a second
            u = since % 0.25
            sig = 0.4 * np.sin(2 * np.pi * (2000 * u + 8000 * u * u))
        ramp = np.clip(np.minimum(since, e.end - t[sel]) / 0.005, 0, 1)  # 5 ms edges: no clicks
        out[sel] += (ramp * sig).astype(np.float32)
    return out


def synthesize_events(out_dir: str | Path, seed: int = 0, duration: float = 120.0, vod_id: str = "200001",
                      channel: str = "forest", fps: int = 10, size: tuple[int, int] = (160, 90)) -> tuple[Path, Path, Path]:
    """Write `{vod_id}.mkv`, `{vod_id}.irc` and `{vod_id}.truth.json` into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stream = plan_event_stream(seed, duration, channel)
    video, chat, truth = out_dir / f"{vod_id}.mkv", out_dir / f"{vod_id}.irc", out_dir / f"{vod_id}{TRUTH_SUFFIX}"
    tmp = out_dir / f".{vod_id}.mkv.tmp"
    encode_av(tmp, duration, fps, size, lambda t: render_event_frame(stream, t, size),
              lambda first, n: render_event_audio(stream, first, n))
    tmp.replace(video)
    write_irc(stream.messages, chat)
    truth.write_text(json.dumps(stream.truth.to_json(), indent=1))
    return video, chat, truth
