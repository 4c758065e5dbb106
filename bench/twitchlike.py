"""Twitch-like test VODs: H.264 (x264, 2 s GOP, B-frames) + AAC stereo 48 kHz in mp4, with chat.

Twitch serves VOD renditions as H.264 with a 2 s keyframe interval and AAC audio; `download`
fetches 480p30 by default and "source" is often 1080p60. Decoding cost depends on resolution,
frame rate, bitrate and motion, so the picture here is textured and moving (panning noise with
structure, a moving block, scene cuts every few seconds) at Twitch-like bitrates, not flat
colour. The files are cached by their parameters: a rerun of the bench reuses them.

    make_vod(Path("cache"), "480p30", seconds=600)   # -> (video.mp4, chat.irc)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vod2chat.synth.scenes import plan_stream
from vod2chat.ingest.chat import write_irc

AUDIO_RATE = 48000
GOP_S = 2


@dataclass(frozen=True)
class Rendition:
    width: int
    height: int
    fps: int
    kbps: int  # Twitch-like target bitrate


RENDITIONS = {
    "480p30": Rendition(852, 480, 30, 1400),
    "720p60": Rendition(1280, 720, 60, 3000),
    "1080p60": Rendition(1920, 1080, 60, 6000),
}


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Luma with structure at several scales (what makes x264 spend bits and the decoder work)."""
    out = np.zeros((h, w), np.float32)
    for scale, amp in ((64, 60.0), (16, 35.0), (4, 20.0), (1, 10.0)):
        small = rng.standard_normal((h // scale + 2, w // scale + 2)).astype(np.float32)
        out += amp * np.repeat(np.repeat(small, scale, 0), scale, 1)[:h, :w]
    return np.clip(out + 128, 0, 255).astype(np.uint8)


def _encode_loop(path: Path, r: Rendition, seconds: int, seed: int) -> None:
    """`seconds` of textured, moving video, encoded once (the expensive part)."""
    rng = np.random.default_rng(seed)
    w, h = r.width, r.height
    scenes = [(_texture(rng, 2 * h, 2 * w), rng.integers(40, 216, 2).astype(np.uint8)) for _ in range(4)]
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=r.fps, options={
            "preset": "superfast",
            "x264-params": f"keyint={GOP_S * r.fps}:min-keyint={GOP_S * r.fps}:scenecut=0:bframes=2"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.bit_rate = r.kbps * 1000
        for i in range(seconds * r.fps):
            t = i / r.fps
            luma, chroma = scenes[int(t // 2.5) % len(scenes)]
            # Pan across a texture twice the frame size, with a bright block bouncing on top.
            x0, y0 = int((t * 37) % w), int((t * 23) % h)
            y = luma[y0 : y0 + h, x0 : x0 + w].copy()
            bx, by = int((t * 211) % (w - 96)), int((t * 97) % (h - 96))
            y[by : by + 96, bx : bx + 96] = 235
            yuv = np.empty((h * 3 // 2, w), np.uint8)
            yuv[:h] = y
            yuv[h:] = chroma[(i // r.fps) % 2]
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, r.fps)
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))


def write_vod(path: Path, r: Rendition, seconds: float, seed: int = 0, loop_s: int = 10) -> None:
    """The video is a `loop_s` encode (a whole number of closed GOPs) remuxed over and over with
    shifted timestamps: decoding it costs what a real file of that length costs, while encoding
    1080p60 on 2 cores stays a minute, not an hour. Audio (tones + noise) is encoded throughout."""
    loop = path.with_name(f".{r.width}x{r.height}p{r.fps}-{loop_s}s-seed{seed}.loop.mp4")
    if not loop.exists():
        _encode_loop(loop.with_suffix(".tmp.mp4"), r, loop_s, seed)
        os.replace(loop.with_suffix(".tmp.mp4"), loop)
    rng = np.random.default_rng(seed + 1)
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(loop)) as src, av.open(str(tmp), "w", format="mp4") as out:
        sv = src.streams.video[0]
        vs = out.add_stream_from_template(sv)
        packets = [p for p in src.demux(sv) if p.size]
        step = round(loop_s / sv.time_base)  # one loop in the stream's time base
        aus = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        aus.bit_rate = 160_000
        chunk = aus.codec_context.frame_size or 1024
        n_audio, a_next = round(seconds * AUDIO_RATE), 0
        for k in range(int(np.ceil(seconds / loop_s))):
            for p in packets:
                if p.pts is not None and (p.pts * sv.time_base) + k * loop_s >= seconds:
                    continue
                q = av.Packet(bytes(p))
                q.pts, q.dts = p.pts + k * step, p.dts + k * step
                q.duration, q.time_base, q.is_keyframe = p.duration, sv.time_base, p.is_keyframe
                q.stream = vs
                out.mux(q)
                until = min(n_audio, round(float(q.dts * sv.time_base) * AUDIO_RATE))
                while a_next < until:
                    n = min(chunk, n_audio - a_next)
                    f = 220.0 * (1 + int(a_next / AUDIO_RATE // 3) % 4)
                    tt = (a_next + np.arange(n)) / AUDIO_RATE
                    wave = (0.2 * np.sin(2 * np.pi * f * tt) + 0.05 * rng.standard_normal(n)).astype(np.float32)
                    af = av.AudioFrame.from_ndarray(np.stack([wave, wave]), format="fltp", layout="stereo")
                    af.sample_rate, af.pts, af.time_base = AUDIO_RATE, a_next, Fraction(1, AUDIO_RATE)
                    out.mux(aus.encode(af))
                    a_next += n
        while a_next < n_audio:
            n = min(chunk, n_audio - a_next)
            af = av.AudioFrame.from_ndarray(np.zeros((2, n), np.float32), format="fltp", layout="stereo")
            af.sample_rate, af.pts, af.time_base = AUDIO_RATE, a_next, Fraction(1, AUDIO_RATE)
            out.mux(aus.encode(af))
            a_next += n
        out.mux(aus.encode(None))
    os.replace(tmp, path)


def make_vod(cache: Path, name: str, seconds: float, seed: int = 0) -> tuple[Path, Path]:
    """`{cache}/{name}-{seconds}s/{vod_id}.mp4` + `.irc` (chat from synth.scenes' chat model),
    written once and reused."""
    r = RENDITIONS[name]
    d = Path(cache) / f"{name}-{seconds:g}s-seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    vod_id = f"9{r.height}{r.fps}{int(seconds)}"
    video, chat = d / f"{vod_id}.mp4", d / f"{vod_id}.irc"
    if not video.exists():
        write_vod(video, r, seconds, seed)
    if not chat.exists():
        write_irc(plan_stream(seed, seconds).messages, chat)
    return video, chat
