"""A synthetic stream whose chat reacts to what it shows and sounds like: offline demos and tests.

The stream is a run of scenes of a few seconds. Each scene fills the screen with one of
COLOURS (a dark square bounces across it) and plays one of SOUNDS (beeps at one of four pitches,
or silence). Chat is background chatter at a steady rate plus reactions: after each scene
change, a few viewers react to the colour and to the sound, 1 to 4 s later, with text that
names what they see or hear ("RED SCREEN", "bass drop"). A model that sees and hears the stream
can predict those messages; one that only reads chat cannot.

Everything is drawn from one seed: the same seed gives a byte-identical chat file and a video
that decodes to identical frames and samples. `plan_stream` gives the schedule and the chat
without writing anything (tests check reactions against it). No schedule file is written next
to the video: the ingest pairing takes any `<vod_id>.*.json` there as the chat log.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import av
import numpy as np

from vod2chat.config import param
from vod2chat.ingest.chat import Message, write_irc

AUDIO_RATE = 16000
SCENE_S = (3.0, 8.0)  # scene length range
REACTION_DELAY_S = (1.0, 4.0)  # viewers react this long after a change
CHATTER_PER_S = 0.7  # background message rate
KEYFRAME_S = 2.0  # keyframe interval: seeking never decodes more than this

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 190, 60), "blue": (30, 70, 220),
    "yellow": (240, 220, 40), "purple": (150, 40, 200), "white": (235, 235, 235),
}
SOUNDS: dict[str, float | None] = {"bass": 110.0, "beep": 440.0, "high": 1760.0, "chirp": 3520.0, "silence": None}

COLOUR_REACTIONS: dict[str, list[str]] = {
    "red": ["RED SCREEN", "so red", "red again lol", "why is it red", "RED"],
    "green": ["so green", "GREEN SCREEN", "green moment", "grass colour", "GREEN"],
    "blue": ["blue screen of death", "so blue", "BLUE", "feeling blue", "blue again"],
    "yellow": ["YELLOW", "so yellow", "banana screen", "yellow hurts my eyes", "yellow again"],
    "purple": ["PURPLE", "so purple", "twitch purple", "purple moment", "purple again"],
    "white": ["WHITE SCREEN", "flashbang", "my eyes white", "so bright", "white again"],
}
SOUND_REACTIONS: dict[str, list[str]] = {
    "bass": ["bass drop", "BASS", "that bass tho", "my subwoofer", "deep bass"],
    "beep": ["beep beep", "that beep", "BEEP", "microwave beep", "beeping again"],
    "high": ["that high beep", "high pitch ouch", "my ears high", "HIGH BEEP", "dog whistle"],
    "chirp": ["chirp chirp", "birds chirping", "CHIRP", "that chirp", "tiny chirp"],
    "silence": ["so quiet", "audio died?", "silence...", "no sound", "muted?"],
}
CHATTER = [
    "lol", "hi chat", "LUL", "what game is this", "gg", "Pog", "hello from germany", "first time here",
    "xD", "nice", "chat is this real", "W stream", "Kappa", "KEKW", "how long is the stream", "o7",
    "good morning", "any plans for today?", "love this", "monkaS", "based", "what did I miss", "hype",
    "can you say hi", "new sub here", "this is fine", "PogChamp", "true", "no way", "LETS GO",
]
_NAME_A = ["pixel", "turbo", "mango", "shadow", "lazy", "cosmic", "fuzzy", "silent", "rapid", "lucky"]
_NAME_B = ["fox", "gamer", "otter", "wizard", "panda", "ninja", "toast", "moose", "llama", "cat"]


@dataclass(frozen=True)
class Scene:
    start: float
    end: float
    colour: str
    sound: str
    x0: float  # the square's start position and velocity, in frame fractions (per second)
    y0: float
    vx: float
    vy: float


@dataclass(frozen=True)
class Stream:
    duration: float
    scenes: list[Scene]
    messages: list[Message]

    def scene_at(self, t: float) -> Scene:
        return self.scenes[_scene_index(self.scenes, np.asarray([t]))[0]]


def _scene_index(scenes: list[Scene], t: np.ndarray) -> np.ndarray:
    starts = np.asarray([s.start for s in scenes])
    return np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(scenes) - 1)


# -- the plan -----------------------------------------------------------------------------
def plan_scenes(rng: np.random.Generator, duration: float) -> list[Scene]:
    scenes: list[Scene] = []
    t, colour, sound = 0.0, None, None
    while t < duration:
        end = min(duration, t + float(rng.uniform(*SCENE_S)))
        # Every change changes both what is seen and what is heard: each one earns reactions.
        colour = str(rng.choice([c for c in COLOURS if c != colour]))
        sound = str(rng.choice([s for s in SOUNDS if s != sound]))
        x0, y0 = rng.uniform(0, 1, 2)
        vx, vy = rng.uniform(0.2, 0.6, 2) * rng.choice([-1, 1], 2)
        scenes.append(Scene(round(t, 3), round(end, 3), colour, sound, float(x0), float(y0), float(vx), float(vy)))
        t = round(end, 3)
    return scenes


def plan_chat(rng: np.random.Generator, scenes: list[Scene], duration: float) -> list[Message]:
    users = [f"{a}_{b}{n}" for a in _NAME_A for b in _NAME_B for n in (7, 42, 99)]
    users = [str(u) for u in rng.choice(users, 60, replace=False)]
    out: list[Message] = []

    def say(t: float, text: str) -> None:
        if 0 <= t < duration:  # millisecond times, as chat logs have (write_irc round-trips them)
            out.append(Message(round(t, 3), users[int(rng.integers(len(users)))], text))

    t = float(rng.exponential(1 / CHATTER_PER_S))
    while t < duration:
        say(t, str(rng.choice(CHATTER)))
        t += float(rng.exponential(1 / CHATTER_PER_S))
    for s in scenes:
        for n, texts in ((int(rng.integers(2, 5)), COLOUR_REACTIONS[s.colour]),
                         (int(rng.integers(1, 4)), SOUND_REACTIONS[s.sound])):
            for _ in range(n):
                say(s.start + float(rng.uniform(*REACTION_DELAY_S)), str(rng.choice(texts)))
    return sorted(out, key=lambda m: m.t)


def plan_stream(seed: int = 0, duration: float = 120.0) -> Stream:
    """The schedule and the chat of a synthetic stream, without writing anything."""
    if not duration > 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    rng = np.random.default_rng(seed)
    scenes = plan_scenes(rng, duration)
    return Stream(duration, scenes, plan_chat(rng, scenes, duration))


# -- rendering ------------------------------------------------------------------------------
def _bounce(x: float) -> float:
    """Position in [0, 1] of something moving at constant speed between two walls."""
    x = x % 2.0
    return 2.0 - x if x > 1.0 else x


def render_frame(scene: Scene, t: float, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = COLOURS[scene.colour]
    side = max(2, h // 4)
    dt = t - scene.start
    x = int(_bounce(scene.x0 + scene.vx * dt) * (w - side))
    y = int(_bounce(scene.y0 + scene.vy * dt) * (h - side))
    img[y:y + side, x:x + side] = (20, 20, 20)
    return img


def render_audio(scenes: list[Scene], first: int, n: int) -> np.ndarray:
    """Samples [first, first + n) at AUDIO_RATE: beeps of 0.2 s every 0.5 s from each scene's start."""
    t = (first + np.arange(n)) / AUDIO_RATE
    idx = _scene_index(scenes, t)
    freq = np.asarray([SOUNDS[s.sound] or 0.0 for s in scenes])[idx]
    since = t - np.asarray([s.start for s in scenes])[idx]
    phase = since % 0.5
    ramp = np.clip(np.minimum(phase, 0.2 - phase) / 0.005, 0.0, 1.0)  # 5 ms edges: no clicks
    return (0.5 * ramp * np.sin(2 * np.pi * freq * since)).astype(np.float32)


def write_video(stream: Stream, path: Path, fps: int, size: tuple[int, int]) -> None:
    encode_av(path, stream.duration, fps, size, lambda t: render_frame(stream.scene_at(t), t, size),
              lambda first, n: render_audio(stream.scenes, first, n))


def encode_av(path: Path, duration: float, fps: int, size: tuple[int, int],
              frame_at: Callable[[float], np.ndarray], audio_at: Callable[[int, int], np.ndarray]) -> None:
    """H.264 + AAC in Matroska: frame_at(t) -> [h, w, 3] uint8; audio_at(first, n) -> n float32 samples."""
    w, h = size
    if w % 2 or h % 2:
        raise ValueError(f"size {size}: H.264 in yuv420p needs an even width and height")
    n_video = round(duration * fps)
    # bitexact: no random track UIDs or encoder version strings, so a seed gives the same bytes.
    with av.open(str(path), "w", format="matroska", options={"fflags": "+bitexact"}) as out:
        vs = out.add_stream("libx264", rate=fps, options={
            "preset": "ultrafast", "crf": "20",
            "x264-params": f"keyint={int(KEYFRAME_S * fps)}:min-keyint={int(KEYFRAME_S * fps)}:threads=1"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        aus.codec_context.flags |= av.codec.context.Flags.bitexact
        vs.codec_context.flags |= av.codec.context.Flags.bitexact
        chunk = aus.codec_context.frame_size or 1024
        # AAC's priming frame makes the container count one frame more than was encoded: leave the
        # last one out so the file lasts `duration`, as long as its video (the tail reads as zeros).
        n_audio = max(0, round(duration * AUDIO_RATE) - chunk)
        a_next = 0
        for i in range(n_video):
            t = i / fps
            frame = av.VideoFrame.from_ndarray(frame_at(t), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(frame))
            # Audio up to this frame's time: packets leave the muxer in time order.
            while a_next < min(n_audio, round((i + 1) / fps * AUDIO_RATE)):
                a_next = _write_audio(out, aus, audio_at, a_next, min(chunk, n_audio - a_next))
        while a_next < n_audio:
            a_next = _write_audio(out, aus, audio_at, a_next, min(chunk, n_audio - a_next))
        out.mux(vs.encode(None))
        out.mux(aus.encode(None))


def _write_audio(out: av.container.OutputContainer, aus: av.audio.stream.AudioStream,
                 audio_at: Callable[[int, int], np.ndarray], first: int, n: int) -> int:
    frame = av.AudioFrame.from_ndarray(audio_at(first, n)[None, :].astype(np.float32), format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, first, Fraction(1, AUDIO_RATE)
    out.mux(aus.encode(frame))
    return first + n


@dataclass
class SynthConfig:
    """`vod2chat synth`: one synthetic stream (video + chat that reacts to it)."""
    out: str = param("synth_out", "output directory: {vod_id}.mkv and {vod_id}.irc go here")
    seed: int = param(0, "everything is drawn from it: the same seed gives the same stream", ge=0)
    duration: float = param(120.0, "seconds", gt=0)
    vod_id: str = param("", "file name stem, which ingest pairs video and chat by; default 100001 (scenes) / 200001 (events)")
    fps: int = param(10, "video frame rate (scenes)", ge=1)
    kind: str = param("scenes", "scenes: coloured scenes with tones (the demo); events: brief events, delayed reaction "
                      "bursts, per-channel words, and a <vod_id>.truth.json for `eval --truth`",
                      choices=["scenes", "events"])
    channel: str = param("forest", "events: the community's vocabulary (forest, harbor; desert, neon; lagoon, tundra)")
    draw: int = param(0, "events: the generator's parameters, drawn from this seed within the family's ranges "
                      "(bench/README.md); 0: the fixed generator", ge=0)


def synthesize(out_dir: str | Path, seed: int = 0, duration: float = 120.0, vod_id: str = "100001",
               fps: int = 10, size: tuple[int, int] = (160, 90)) -> tuple[Path, Path]:
    """Write `{vod_id}.mkv` (H.264 + AAC) and `{vod_id}.irc` (tcd irc chat) into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stream = plan_stream(seed, duration)
    video, chat = out_dir / f"{vod_id}.mkv", out_dir / f"{vod_id}.irc"
    tmp = out_dir / f".{vod_id}.mkv.tmp"  # a reader never sees a half-written video
    write_video(stream, tmp, fps, size)
    tmp.replace(video)
    write_irc(stream.messages, chat)
    return video, chat


# -- live: the same stream written as it happens ----------------------------------------------
def write_live(stream: Stream, sink: str | Path | Any, fps: int = 10, size: tuple[int, int] = (160, 90),
               speed: float = 1.0, fmt: str = "mpegts", segment_s: float = 1.0) -> float:
    """Write the stream as a live encoder would: frame i leaves at `start + i / fps / speed` of the
    wall clock (speed 0: as fast as possible), each packet flushed to `sink` as it is muxed.

    sink: a path (a growing file, what OBS or `ffmpeg -f mpegts out.ts` leave behind), a binary
    file object (a pipe), or with fmt="hls" the path of a playlist that grows by a segment every
    `segment_s` and ends with #EXT-X-ENDLIST. Returns the wall time (time.time()) of stream t = 0.
    """
    import time

    w, h = size
    key = max(1, int(round(min(KEYFRAME_S, segment_s if fmt == "hls" else KEYFRAME_S) * fps)))
    options = {"flush_packets": "1"}
    if fmt == "mpegts":
        options["pes_payload_size"] = "0"  # one PES per audio frame: no muxer-side audio buffering
    elif fmt == "hls":
        options.update(hls_time=str(segment_s), hls_list_size="0", hls_segment_type="mpegts")
    else:
        raise ValueError(f"write_live writes mpegts or hls, not {fmt!r}")
    target = str(sink) if isinstance(sink, (str, Path)) else sink
    with av.open(target, "w", format=fmt, options=options) as out:
        vs = out.add_stream("libx264", rate=fps, options={
            "preset": "ultrafast", "tune": "zerolatency", "crf": "20",
            "x264-params": f"keyint={key}:min-keyint={key}:scenecut=0:threads=1"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        chunk = aus.codec_context.frame_size or 1024
        n_video, n_audio = round(stream.duration * fps), round(stream.duration * AUDIO_RATE)
        a_next, t0 = 0, time.time()
        audio_at = lambda first, n: render_audio(stream.scenes, first, n)  # noqa: E731
        for i in range(n_video):
            if speed > 0:
                time.sleep(max(0.0, t0 + i / fps / speed - time.time()))
            t = i / fps
            frame = av.VideoFrame.from_ndarray(render_frame(stream.scene_at(t), t, size), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            while a_next < min(n_audio, round((i + 1) / fps * AUDIO_RATE)):
                a_next = _write_audio(out, aus, audio_at, a_next, min(chunk, n_audio - a_next))
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        out.mux(aus.encode(None))
    return t0
