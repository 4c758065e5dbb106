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

Draws (`--draw N`, bench/moment.py --draws): a benchmark family rather than one benchmark. Draw
N > 0 samples every generator parameter from the ranges in DRAW_RANGES (bench/README.md lists
them): event lengths and gaps, which event kinds occur and how many are audio, each channel's
reaction delay window, burst size, chatter rate, vocabulary sizes, background motion and noise,
2 to 4 channels and the VOD length. Draw 0 is the fixed generator above, bit for bit. Whatever
the draw, reactions stay uniform over the channel's delay window and texts uniform over their
source's phrases, so the truth file (and the oracle reading it) stays exact.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
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
    # Two more communities, only in draws with 3 or 4 channels.
    "desert": {
        "chatter": ["howdy", "sand in my keyboard", "any cowboys here", "dusty vibes", "yeehaw", "hot today",
                    "cactus gang", "long ride", "canteen check", "tumbleweed spotted", "who plays banjo",
                    "sunset soon", "camel emote when", "mirage incoming", "ride on", "boots up"],
        "flash": ["sun in my face", "desert sun flash", "too bright partner", "solar flare", "shades down cowboy"],
        "glitch": ["heat haze glitch", "sandstorm pixels", "signal lost in the dunes", "static out west", "jammed radio"],
        "blackout": ["night fell fast", "campfire went out", "pitch dark desert", "no moon tonight", "lantern died"],
        "ding": ["saloon bell", "spur jingle", "cash register ding", "triangle dinner bell", "chuckwagon ding"],
        "boom": ["dynamite", "mine blast", "canyon echo boom", "cannon fire", "rockslide"],
        "chirp": ["roadrunner beep", "vulture cry", "desert wren", "hawk screech", "coyote yip"],
    },
    "neon": {
        "chatter": ["sup netrunners", "synthwave on", "night city hours", "chrome arms", "jacked in",
                    "cyber hello", "glow sticks up", "retro hours", "neon dreams", "pixel pals",
                    "arcade mode", "vaporwave", "logged on", "grid runner", "data stream", "hacker voice"],
        "flash": ["strobe overload", "neon burst", "laser flash", "LED storm", "photon blast"],
        "glitch": ["datamosh", "buffer overflow", "packet loss", "corrupt sector", "kernel panic"],
        "blackout": ["grid down", "brownout", "power grid fail", "offline mode", "system halt"],
        "ding": ["achievement unlocked", "coin insert", "level up ding", "arcade chime", "credit added"],
        "boom": ["bass drop", "subwoofer test", "mainframe explode", "reactor blast", "synth kick"],
        "chirp": ["modem screech", "dial up noise", "robot bird", "sonar ping", "servo whine"],
    },
    # Two communities with emotes of their own, which a tokenizer trained on forest and harbor
    # cuts into bytes: bench/newstreamer.py adds them to a model trained on those two. Not in
    # the benchmark family (draw_params never picks them).
    "lagoon": {
        "chatter": ["wassup lagoonies", "Clueless", "peepoHappy", "xdd", "YEP cock", "lagoonWave",
                    "gm gamers", "widepeepoHappy", "Aware", "ICANT", "Stare", "docnotL", "modCheck",
                    "forsenCD", "pepeMeltdown", "Okayge"],
        "flash": ["lagoonFlash", "FLASHED Aware", "eyes gone ICANT", "peepoBlind", "solar flare xdd"],
        "glitch": ["lagoonGlitch", "GLITCHED modCheck", "datamosh Clueless", "pixel soup", "vhs mode"],
        "blackout": ["lagoonDark", "POWERLESS", "Stare into void", "screen died xdd", "eclipse Aware"],
        "ding": ["lagoonDing", "DING Okayge", "timer peepoHappy", "bell rang", "oven ready xdd"],
        "boom": ["lagoonBoom", "KABLAM", "speakers ICANT", "subwoofer pepeMeltdown", "thunder Aware"],
        "chirp": ["lagoonBird", "CHIRPY", "parrot modCheck", "tweety Clueless", "sparrow peepoHappy"],
    },
    "tundra": {
        "chatter": ["hej tundra", "BatChest", "Chatting", "GIGACHAD", "tundraHi", "Bedge", "copium",
                    "hopium", "Tasty", "NOTED", "Susge", "EZY", "peepoSnow", "FeelsStrongMan",
                    "ratJAM", "forsenE"],
        "flash": ["tundraFlash", "snowblind Susge", "WHITEOUT", "aurora BatChest", "blizzard light"],
        "glitch": ["tundraGlitch", "frozen frames", "BUGGED copium", "ice in the cables", "lagspike NOTED"],
        "blackout": ["tundraDark", "polar night", "LIGHTS GONE", "Bedge time", "darkness GIGACHAD"],
        "ding": ["tundraDing", "sleigh bells", "DINGDING", "chime Tasty", "icicle ring"],
        "boom": ["tundraBoom", "AVALANCHE", "ice cracked", "boom BatChest", "glacier calved"],
        "chirp": ["tundraBird", "PTARMIGAN", "snow bunting", "owl hoot Chatting", "chirp hopium"],
    },
}
# Channel indices seed each VOD's stream: forest and harbor keep the ones they had when they
# were the only two channels (their sorted order), so draw 0 reproduces the old streams.
CHANNEL_ORDER = ("forest", "harbor", "desert", "neon")
# lagoon and tundra seed with the index they had where they were added (branch initfrom: the
# third and fourth channel), so bench/newstreamer.py synthesizes the streams it was first
# measured on. desert and neon share those indices: one VOD seed gives a lagoon and a desert
# VOD the same event timeline (their words differ), so give each channel its own VOD seeds
# (bench/newstreamer.py does).
SEED_INDEX = {**{c: i for i, c in enumerate(CHANNEL_ORDER)}, "lagoon": 2, "tundra": 3}


@dataclass(frozen=True)
class Draw:
    """One member of the benchmark family: every parameter the events generator uses."""

    draw: int = 0
    channels: tuple[str, ...] = ("forest", "harbor")
    vod_s: float = 240.0  # length of a training or test VOD (bench/moment.py)
    event_s: tuple[float, float] = EVENT_S
    gap_s: tuple[float, float] = GAP_S
    kinds: tuple[str, ...] = EVENT_TYPES  # the event types that occur
    audio_share: float = 0.5  # of events, how many are audio ones
    delay_s: dict[str, tuple[float, float]] = field(default_factory=lambda: {c: DELAY_S for c in CHANNEL_ORDER})
    reactions_per_event: float = REACTIONS_PER_EVENT
    chatter_per_s: float = CHATTER_PER_S
    chatter_vocab: int = 16  # chatter phrases per channel
    event_vocab: int = 5  # phrases per channel and event type
    motion: float = 1.0  # speed of the bouncing square, x the fixed generator's
    hiss: float = 0.02  # audio noise amplitude
    pixel_noise: float = 0.0  # std of per-pixel video noise (0-255 scale)

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else {c: list(w) for c, w in v.items()} if isinstance(v, dict) else v)
                for k, v in self.__dict__.items()}


DRAW0 = Draw()
# The family's ranges (uniform unless said; bench/README.md "The benchmark family" copies them).
DRAW_RANGES: dict[str, tuple[float, float]] = {
    "channels": (2, 4),  # integer; which ones: a random subset of CHANNEL_ORDER
    "vod_s": (120.0, 480.0),  # rounded to 10 s
    "event_s.min": (0.3, 2.0), "event_s.width": (0.2, 2.0),  # event_s = (min, min + width)
    "gap_s.min": (1.0, 6.0), "gap_s.width": (2.0, 15.0),
    "video_kinds": (1, 3), "audio_kinds": (1, 3),  # integers: how many of each occur
    "audio_share": (0.1, 0.9),
    "delay_s.min": (0.5, 5.0), "delay_s.width": (2.0, 10.0),  # per channel
    "reactions_per_event": (1.5, 8.0),
    "chatter_per_s": (0.1, 1.5),
    "chatter_vocab": (4, 16), "event_vocab": (2, 5),  # integers
    "motion": (0.25, 4.0),
    "hiss": (0.005, 0.08),
    "pixel_noise": (0.0, 20.0),
}


def draw_params(draw: int) -> Draw:
    """The generator parameters of draw `draw` (0: the fixed generator). Seeded: same draw, same
    parameters on every machine."""
    if draw < 0:
        raise ValueError(f"draw must be >= 0, got {draw}")
    if draw == 0:
        return DRAW0
    rng = np.random.default_rng([draw, 20])
    u = lambda key: float(rng.uniform(*DRAW_RANGES[key]))  # noqa: E731
    n = lambda key: int(rng.integers(DRAW_RANGES[key][0], DRAW_RANGES[key][1] + 1))  # noqa: E731
    channels = rng.choice(len(CHANNEL_ORDER), n("channels"), replace=False)
    lo_e, lo_g = u("event_s.min"), u("gap_s.min")
    event_s, gap_s = (round(lo_e, 2), round(lo_e + u("event_s.width"), 2)), (round(lo_g, 2), round(lo_g + u("gap_s.width"), 2))
    video = tuple(str(k) for k in rng.choice(VIDEO_EVENTS, n("video_kinds"), replace=False))
    audio = tuple(str(k) for k in rng.choice(AUDIO_EVENTS, n("audio_kinds"), replace=False))
    delay = {}
    for c in CHANNEL_ORDER:
        lo = u("delay_s.min")
        delay[c] = (round(lo, 2), round(lo + u("delay_s.width"), 2))
    return Draw(draw=draw, channels=tuple(CHANNEL_ORDER[i] for i in sorted(channels)),
                vod_s=float(round(u("vod_s"), -1)), event_s=event_s, gap_s=gap_s,
                kinds=tuple(k for k in EVENT_TYPES if k in video + audio), audio_share=round(u("audio_share"), 3),
                delay_s=delay, reactions_per_event=round(u("reactions_per_event"), 2),
                chatter_per_s=round(u("chatter_per_s"), 3), chatter_vocab=n("chatter_vocab"),
                event_vocab=n("event_vocab"), motion=round(u("motion"), 3), hiss=round(u("hiss"), 4),
                pixel_noise=round(u("pixel_noise"), 1))


def channel_texts(draw: Draw, channel: str) -> dict[str, list[str]]:
    """The channel's phrases under a draw: a seeded subset of its vocabulary, the same for every VOD."""
    texts = CHANNELS[channel]
    if draw.chatter_vocab >= len(texts["chatter"]) and draw.event_vocab >= len(texts["flash"]):
        return {k: list(v) for k, v in texts.items()}
    rng = np.random.default_rng([draw.draw, 21, SEED_INDEX[channel]])
    out = {}
    for source, phrases in texts.items():
        k = min(len(phrases), draw.chatter_vocab if source == "chatter" else draw.event_vocab)
        out[source] = [phrases[i] for i in sorted(rng.choice(len(phrases), k, replace=False))]
    return out


@dataclass
class EventStream:
    truth: Truth
    messages: list[Message]
    seed: int
    draw: Draw = DRAW0


# -- the plan -----------------------------------------------------------------------------
def _event_kind(rng: np.random.Generator, draw: Draw) -> str:
    video = [k for k in draw.kinds if k in VIDEO_EVENTS]
    audio = [k for k in draw.kinds if k in AUDIO_EVENTS]
    if video and audio and abs(draw.audio_share - len(audio) / len(draw.kinds)) < 1e-9:
        return str(rng.choice(draw.kinds))  # uniform over the kinds: the fixed generator's draw, bit for bit
    pool = audio if (not video or (audio and rng.random() < draw.audio_share)) else video
    return str(rng.choice(pool))


def plan_events(rng: np.random.Generator, duration: float, draw: Draw = DRAW0) -> list[Event]:
    events, t = [], float(rng.uniform(*draw.gap_s))
    while True:
        start = round(t, 3)
        end = round(start + float(rng.uniform(*draw.event_s)), 3)
        if end > duration:
            return events
        events.append(Event(start, end, _event_kind(rng, draw)))
        t = end + float(rng.uniform(*draw.gap_s))


def plan_event_stream(seed: int = 0, duration: float = 120.0, channel: str = "forest",
                      draw: Draw = DRAW0) -> EventStream:
    """The timeline and the chat of an events stream, without writing anything."""
    if not duration > 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}: choose from {', '.join(CHANNELS)}")
    rng = np.random.default_rng([seed, SEED_INDEX[channel]])
    texts = channel_texts(draw, channel)
    # A channel outside the family (lagoon, tundra) has no drawn delay: the fixed generator's.
    delay = draw.delay_s.get(channel, DELAY_S)
    events = plan_events(rng, duration, draw)
    users = [f"{a}_{b}{n}" for a in _NAME_A for b in _NAME_B for n in (3, 11, 77)]
    users = [str(u) for u in rng.choice(users, 60, replace=False)]
    out: list[Message] = []

    def say(t: float, text: str) -> None:
        if 0 <= t < duration:
            out.append(Message(round(t, 3), users[int(rng.integers(len(users)))], text))

    t = float(rng.exponential(1 / draw.chatter_per_s))
    while t < duration:
        say(t, str(rng.choice(texts["chatter"])))
        t += float(rng.exponential(1 / draw.chatter_per_s))
    for e in events:
        for _ in range(int(rng.poisson(draw.reactions_per_event))):
            say(e.start + float(rng.uniform(*delay)), str(rng.choice(texts[e.type])))
    truth = Truth(channel, float(duration), events, delay, draw.reactions_per_event, draw.chatter_per_s,
                  {k: list(v) for k, v in texts.items()})
    return EventStream(truth, sorted(out, key=lambda m: m.t), seed, draw)


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
    m = stream.draw.motion
    x = int(_bounce(0.3 + (0.21 * m) * t) * (w - side))
    y = int(_bounce(0.6 + (0.17 * m) * t) * (h - side))
    img[y:y + side, x:x + side] = 90
    if stream.draw.pixel_noise > 0:  # sensor-like noise, new every frame: it tells nothing either
        rng = np.random.default_rng([stream.seed, 9, int(round(t * 1000))])
        noisy = img.astype(np.float32) + rng.normal(0, stream.draw.pixel_noise, img.shape).astype(np.float32)
        img = np.clip(noisy, 0, 255).astype(np.uint8)
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
    out *= stream.draw.hiss * (1 + 0.5 * np.sin(2 * np.pi * t / 41.0))
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
                      channel: str = "forest", fps: int = 10, size: tuple[int, int] = (160, 90),
                      draw: Draw = DRAW0) -> tuple[Path, Path, Path]:
    """Write `{vod_id}.mkv`, `{vod_id}.irc` and `{vod_id}.truth.json` into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stream = plan_event_stream(seed, duration, channel, draw)
    video, chat, truth = out_dir / f"{vod_id}.mkv", out_dir / f"{vod_id}.irc", out_dir / f"{vod_id}{TRUTH_SUFFIX}"
    tmp = out_dir / f".{vod_id}.mkv.tmp"
    encode_av(tmp, duration, fps, size, lambda t: render_event_frame(stream, t, size),
              lambda first, n: render_event_audio(stream, first, n))
    tmp.replace(video)
    write_irc(stream.messages, chat)
    truth.write_text(json.dumps(stream.truth.to_json(), indent=1))
    return video, chat, truth
