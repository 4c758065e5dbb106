"""Decoding VODs into what the encoders eat: RGB frames at given times, 16 kHz mono audio spans.

Memory stays bounded on a 4-hour VOD: `read_frames` decodes only from (the keyframe before) the
first requested time to the last one, and `read_audio` only [start, end) plus a short pre-roll.

Time: t = 0 is the container's start (its start_time), the origin chat offsets use. The frame
"at t" is the one on screen at t: the last frame with pts <= t (the first frame for t before
it). Times past the last frame are clamped to it (a stream's video may end a little before the
container's duration, which is the max over the chosen streams); a time more than
`PAST_END_TOLERANCE_S` past `info.duration` is a caller bug and raises ValueError, and a stream
that ends well before its own declared duration is truncated and raises MediaError.

Streams are chosen explicitly (`probe` lists them all): by default the video stream with the
largest resolution and the audio stream with the highest sample rate; callers can pass indices.

Backends for frames: "pyav" (seek to the keyframe before each sampled time when that skips
frames, decode on from there, scale only the sampled frames by swscale straight to the target
size) and "decord" (VideoReader.get_batch). "auto" is PyAV: on H.264 with 2 s GOPs sampled at
1 fps it costs as much CPU as decord at 480p30 and less at 1080p60 (decord converts every
decoded frame, sampled or not), and far less on small frames (`bench/ingest.py --levers`).
decord has no stream selection and known bugs: it can hang inside native code
(dmlc/decord#269, #373, #375) and over-report its frame count, so every decord call runs in a
worker thread with a timeout, its indices are clamped to what duration * fps allows, and any
decord failure falls back to PyAV for that call with a warning naming the file. Both backends
scale with bilinear swscale, so they agree to the pixel on ordinary files.
"""
from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import av
import numpy as np

from vod2chat.ingest.errors import NotRetryable

log = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
PAST_END_TOLERANCE_S = 1.0  # how far past info.duration a requested time may be (clamped)
TRUNCATED_TOLERANCE_S = 1.0  # a stream may end this much before its declared end and still be whole
RESEEK_GAP_S = 10.0  # seek instead of decoding through gaps longer than this between requested times
AUDIO_PREROLL_S = 0.5  # decode this much before `start`: AAC/MP3 frames overlap their predecessor
AUDIO_RESYNC_S = 0.1  # an audio pts this far from where the samples so far lead is a real gap
MAX_BAD_PACKETS = 50  # packets that fail to decode in one call before the file counts as corrupt
NOT_VIDEO_FORMATS = ("tty",)
# Demuxers that open other files or URLs named inside the file (a .ffconcat or playlist saved
# as .mp4 would make the prober read a file beside it): refused by content before opening, and
# by the format ffmpeg detected after.
PLAYLIST_FORMATS = ("concat", "hls", "applehttp", "dash", "imf", "webm_dash_manifest")
PLAYLIST_MAGIC = (b"ffconcat", b"#EXTM3U", b"<")  # concat script, HLS playlist, XML (DASH MPD, IMF CPL)
INTERPOLATION = "BILINEAR"  # decord's scale filter default: keeps the two backends pixel-identical


class MediaError(NotRetryable, RuntimeError):
    """A file that cannot be decoded as asked; the message names the file and what failed."""


@dataclass
class MediaInfo:
    path: str
    duration: float  # seconds: the longest of the chosen streams (container duration if unknown)
    video_stream: int | None
    audio_stream: int | None
    width: int  # of the chosen video stream, before any resize (0 without video)
    height: int
    fps: float  # average frame rate of the chosen video stream (0.0 without video)
    audio_rate: int | None  # native sample rate of the chosen audio stream
    streams: list[dict] = field(default_factory=list)  # every stream, see _stream_dict


# -- probing --------------------------------------------------------------------------------
_hw_unavailable: set[str] = set()  # hardware decoders that failed to open in this process


def _open(path: str | Path, hwaccel: str | None = None) -> av.container.InputContainer:
    """Open a media file; with `hwaccel` ("cuda": NVDEC) video decodes on that device where it
    can (frames come back to host memory), else on the CPU, with one warning per process."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such media file")
    _refuse_playlists(path)
    if hwaccel and hwaccel not in _hw_unavailable:
        from av.codec.hwaccel import HWAccel

        try:
            return _checked(av.open(path, hwaccel=HWAccel(device_type=hwaccel, allow_software_fallback=True)), path)
        except Exception as e:  # noqa: BLE001 - no such device or driver here: decode on the CPU
            _hw_unavailable.add(hwaccel)
            log.warning("%s decoding is unavailable (%s: %s); decoding on the CPU", hwaccel, type(e).__name__, e)
    try:
        return _checked(av.open(path), path)
    except av.FFmpegError as e:
        raise MediaError(f"{path}: cannot open as a media file ({e}); is it a complete video download?") from e


def _refuse_playlists(path: str) -> None:
    """A local media file is media: never a script or playlist naming other files."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(PLAYLIST_MAGIC):
        raise MediaError(f"{path}: is a text file ({head[:16]!r}...: a concat script, playlist or manifest "
                         "naming other files), not a video; give the video file itself")


def _checked(c: av.container.InputContainer, path: str) -> av.container.InputContainer:
    if set(c.format.name.split(",")) & set(PLAYLIST_FORMATS):
        c.close()
        raise MediaError(f"{path}: is {c.format.long_name or c.format.name} (it names other files), not a video; "
                         "give the video file itself")
    return c


def _origin(container: av.container.InputContainer) -> Fraction:
    """Container start in seconds: t = 0 for frames, audio and chat offsets."""
    return Fraction(container.start_time or 0, av.time_base)


def _seconds(value: int | None, time_base: Fraction | None) -> Fraction | None:
    return None if value is None or time_base is None else value * time_base


def _tag_duration(metadata: dict[str, str]) -> Fraction | None:
    """Matroska keeps a track's duration in a tag, "00:00:40.000000000", not in the stream header."""
    value = metadata.get("DURATION") or metadata.get("duration")
    try:
        h, m, sec = value.split(":")
        return (int(h) * 3600 + int(m) * 60) + Fraction(sec)
    except (AttributeError, ValueError):
        return None


def _stream_dict(s: av.stream.Stream, origin: Fraction) -> dict[str, Any]:
    """A plain, picklable description of one stream; times in seconds from the container start."""
    start = _seconds(s.start_time, s.time_base)
    duration = _seconds(s.duration, s.time_base) or _tag_duration(dict(s.metadata))
    d: dict[str, Any] = {
        "index": s.index,
        "type": s.type,
        "codec": s.codec_context.name if s.codec_context is not None else None,
        "start": float(start - origin) if start is not None else None,
        "duration": float(duration) if duration is not None else None,
        "frames": s.frames or None,
        "language": s.language,
        "default": bool(s.disposition & av.stream.Disposition.default),
        "attached_pic": bool(s.disposition & av.stream.Disposition.attached_pic),
    }
    if s.type == "video":
        rate = s.average_rate or s.guessed_rate or s.base_rate
        d.update(width=s.codec_context.width, height=s.codec_context.height, fps=float(rate) if rate else 0.0)
    elif s.type == "audio":
        d.update(sample_rate=s.codec_context.sample_rate, channels=s.codec_context.channels)
    return d


def _stream_end(d: dict[str, Any]) -> float | None:
    if d["duration"] is None:
        return None
    return (d["start"] or 0.0) + d["duration"]


def _pick(path: str, streams: list[dict], kind: str, wanted: int | None) -> dict | None:
    candidates = [d for d in streams if d["type"] == kind and not d.get("attached_pic")]
    if wanted is not None:
        for d in streams:
            if d["index"] == wanted and d["type"] == kind:
                return d
        listing = ", ".join(f"{d['index']}:{d['type']}/{d['codec']}" for d in streams)
        raise MediaError(f"{path}: stream {wanted} is not a {kind} stream (streams: {listing}); pass another index")
    if not candidates:
        return None
    if kind == "video":  # the largest picture; ties go to the lowest index
        return max(candidates, key=lambda d: (d["width"] * d["height"], -d["index"]))
    return max(candidates, key=lambda d: (d["sample_rate"] or 0, d["channels"] or 0, -d["index"]))


def probe(path: str | Path, video_stream: int | None = None, audio_stream: int | None = None) -> MediaInfo:
    """List every stream, choose a video and an audio stream, and read the duration."""
    path = str(path)
    with _open(path) as c:
        if c.format.name in NOT_VIDEO_FORMATS:  # ffmpeg opens any text file as ANSI art
            raise MediaError(f"{path}: is {c.format.long_name or c.format.name}, not a video")
        origin = _origin(c)
        streams = [_stream_dict(s, origin) for s in c.streams]
        container_duration = c.duration / av.time_base if c.duration else None
    v = _pick(path, streams, "video", video_stream)
    a = _pick(path, streams, "audio", audio_stream)
    if v is None and a is None:
        raise MediaError(f"{path}: no video or audio stream (streams: {[d['type'] for d in streams]})")
    ends = [e for e in (_stream_end(d) for d in (v, a) if d is not None) if e is not None]
    duration = max(ends) if ends else container_duration
    if not duration or not math.isfinite(duration) or duration <= 0:
        raise MediaError(f"{path}: neither the container nor its streams say how long it is; remux it")
    return MediaInfo(
        path=path, duration=float(duration),
        video_stream=v["index"] if v else None, audio_stream=a["index"] if a else None,
        width=v["width"] if v else 0, height=v["height"] if v else 0, fps=v["fps"] if v else 0.0,
        audio_rate=a["sample_rate"] if a else None, streams=streams,
    )


def _stream_info(info: MediaInfo, index: int) -> dict[str, Any]:
    return next(d for d in info.streams if d["index"] == index)


# -- frames -----------------------------------------------------------------------------------
def _check_times(info: MediaInfo, times: Sequence[float]) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if not np.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{info.path}: frame times must be finite and >= 0, got {t[~np.isfinite(t) | (t < 0)][:5]}")
    if len(t) and t.max() > info.duration + PAST_END_TOLERANCE_S:
        raise ValueError(f"{info.path}: frame time {t.max():.3f} s is past the end "
                         f"(the file lasts {info.duration:.3f} s)")
    return t


def read_frames(info: MediaInfo, times: Sequence[float], size: tuple[int, int] = (224, 224),
                backend: str = "auto", timeout_s: float = 120.0, threads: int = 0,
                seek_keyframes: bool = True, hwaccel: str | None = None) -> np.ndarray:
    """RGB frames shown at `times` (seconds), squashed to size=(W, H): uint8 [N, H, W, 3].
    `threads`: decoder threads (0: the decoder's own choice, one per core). `seek_keyframes`
    (PyAV): seek to a keyframe rather than decode frames no requested time shows. `hwaccel`:
    decode on that device ("cuda": NVDEC) with PyAV, falling back to the CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if info.video_stream is None:
        raise MediaError(f"{info.path}: has no video stream to read frames from")
    t = _check_times(info, times)
    w, h = int(size[0]), int(size[1])
    if len(t) == 0:
        return np.zeros((0, h, w, 3), np.uint8)
    if backend == "decord":
        if importlib.util.find_spec("decord") is None:
            raise ValueError("decode_backend=decord needs decord, an optional dependency: pip install "
                             "'vod2chat[decord]', or decode_backend=auto (PyAV)")
        try:
            return _read_frames_decord(info, t, w, h, timeout_s, threads)
        except Exception as e:  # any decord failure: PyAV is slower but tells the truth
            log.warning("%s: decord failed (%s: %s); decoding these %d frames with PyAV", info.path,
                        type(e).__name__, e, len(t))
    return _read_frames_pyav(info, t, w, h, threads, seek_keyframes, hwaccel)


def _decoded(container: av.container.InputContainer, stream: av.stream.Stream, path: str,
             what: str) -> Iterator[av.frame.Frame]:
    """Frames of one stream; a few undecodable packets are skipped (real VODs have some)."""
    bad = 0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError as e:
            bad += 1
            if bad > MAX_BAD_PACKETS:
                raise MediaError(f"{path}: more than {MAX_BAD_PACKETS} corrupt {what} packets ({e}); "
                                 "the file is damaged: download it again") from e
            continue
        yield from frames


def time_tol(fps: float) -> float:
    """How far after t a frame's pts may be and still count as shown at t: absorbs ms-rounded
    container timestamps (mkv, flv: <= 0.5 ms), but not NTSC's 1.001 (frame 30 at 1.001 s is not
    on screen at t = 1.0), nor a whole frame."""
    return min(0.6e-3, 0.25 / fps) if fps > 0 else 0.6e-3


def _frame_time(frame: av.frame.Frame, origin: Fraction) -> float | None:
    return float(frame.time - origin) if frame.pts is not None else None


def _seek_decode(c: av.container.InputContainer, s: av.stream.Stream, path: str, what: str, t: float,
                 origin: Fraction, tol: float) -> Iterator[av.frame.Frame]:
    """Frames of `s` from the keyframe at or before t (seconds from the container start) on.

    Some containers (flv without an index, broken cues) seek past the target: back off then.
    """
    start = float(_seconds(s.start_time, s.time_base) - origin) if s.start_time is not None else 0.0
    target, back = t, 1.0
    while True:
        c.seek(int((Fraction(max(target, start)) + origin) / s.time_base), stream=s, backward=True)
        frames = _decoded(c, s, path, what)
        first = next(frames, None)
        first_t = _frame_time(first, origin) if first is not None else None
        if target <= start or (first is not None and (first_t is None or first_t <= t + tol)):
            return itertools.chain([first], frames) if first is not None else iter(())
        target, back = target - back, back * 2


def _keyframe_times(c: av.container.InputContainer, s: av.stream.Stream, origin: Fraction, t0: float,
                    t1: float) -> np.ndarray:
    """Times of the keyframes from the one at or before t0 to t1, from packets alone (demuxing
    costs little next to decoding). Empty if the container cannot say (no pts, no key flags)."""
    keys: list[float] = []
    try:
        c.seek(int((Fraction(max(t0, 0.0)) + origin) / s.time_base), stream=s, backward=True)
        for p in c.demux(s):
            if p.pts is None:
                continue
            pt = float(p.pts * s.time_base - origin)
            if p.is_keyframe:
                keys.append(pt)
            if pt > t1 + 1.0 and keys and keys[-1] > t1:
                break
    except av.FFmpegError:
        return np.zeros(0)
    return np.asarray(sorted(keys))


class _FrameCursor:
    """Walks one video stream forward, seeking only when it must (backwards, or past a gap), or
    when it saves decoding: a keyframe between the next frame and the requested time means the
    frames before it need not be decoded at all (1 fps from 30 fps with 2 s GOPs: half of them)."""

    def __init__(self, container: av.container.InputContainer, stream: av.stream.Stream, path: str, fps: float,
                 keyframes: np.ndarray | None = None):
        self.c, self.s, self.path = container, stream, path
        self.keyframes = keyframes if keyframes is not None else np.zeros(0)
        self.origin = _origin(container)
        self.dt = 1.0 / fps if fps > 0 else 0.04
        self.tol = time_tol(fps)
        self.frames: Iterator[av.VideoFrame] | None = None
        self.prev: av.VideoFrame | None = None
        self.next: av.VideoFrame | None = None
        self.prev_t = self.next_t = -math.inf

    def _pull(self) -> None:
        self.next = next(self.frames, None)
        if self.next is None:
            self.next_t = math.inf
        else:  # a frame without pts follows its predecessor
            t = _frame_time(self.next, self.origin)
            self.next_t = t if t is not None else max(self.prev_t, 0.0) + self.dt

    def _seek(self, t: float) -> None:
        self.frames = _seek_decode(self.c, self.s, self.path, "video", t, self.origin, self.tol)
        self.prev, self.prev_t = None, -math.inf
        self._pull()

    def _key_ahead(self, t: float) -> bool:
        """A keyframe after the next decoded frame and at or before t: decoding up to it is wasted."""
        i = np.searchsorted(self.keyframes, t + self.tol, side="right") - 1
        return i >= 0 and self.keyframes[i] > self.next_t + self.tol

    def frame_at(self, t: float) -> av.VideoFrame:
        if (self.frames is None or t + self.tol < self.prev_t or self.next_t + RESEEK_GAP_S < t
                or self._key_ahead(t)):
            self._seek(t)
        while self.next is not None and self.next_t <= t + self.tol:
            self.prev, self.prev_t = self.next, self.next_t
            self._pull()
        if self.prev is None:  # t before the first frame
            if self.next is None:
                raise MediaError(f"{self.path}: video stream {self.s.index} decoded no frame at or after {t:.3f} s; "
                                 "the file is damaged or truncated")
            return self.next
        return self.prev


def _read_frames_pyav(info: MediaInfo, t: np.ndarray, w: int, h: int, threads: int = 0,
                     seek_keyframes: bool = True, hwaccel: str | None = None) -> np.ndarray:
    out = np.empty((len(t), h, w, 3), np.uint8)
    declared_end = _stream_end(_stream_info(info, info.video_stream)) or info.duration
    with _open(info.path, hwaccel) as c:
        try:
            stream = c.streams[info.video_stream]
            # Frame threads (x264 writes one slice per frame, so slice threads would not help);
            # a keyframe seek below discards at most `threads` frames in flight.
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = threads
            keys = _keyframe_times(c, stream, _origin(c), float(t.min()), float(t.max())) if seek_keyframes else None
            cursor = _FrameCursor(c, stream, info.path, info.fps, keys)
            scaler = av.video.reformatter.VideoReformatter()
            last: tuple[av.VideoFrame | None, np.ndarray | None] = (None, None)
            for i in np.argsort(t, kind="stable"):
                frame = cursor.frame_at(float(t[i]))
                if frame is not last[0]:  # several times can fall on one frame: scale it once
                    rgb = scaler.reformat(frame, w, h, "rgb24", interpolation=INTERPOLATION).to_ndarray()
                    last = (frame, rgb)
                out[i] = last[1]
                whole_until = min(float(t[i]), declared_end) - TRUNCATED_TOLERANCE_S - cursor.dt
                if cursor.next is None and cursor.prev_t < whole_until:
                    raise MediaError(f"{info.path}: video ends at {cursor.prev_t:.2f} s but the file says "
                                     f"{declared_end:.2f} s: truncated or corrupt; download it again")
        except av.FFmpegError as e:
            raise MediaError(f"{info.path}: decoding video stream {info.video_stream} failed ({e})") from e
    return out


# -- decord -----------------------------------------------------------------------------------
_decord_lock = threading.Lock()
# (path, mtime, size, w, h) -> VideoReader: opening one demuxes the whole file to index it, so a
# worker keeps it across its read_frames calls. Like the worker, it is meant for one thread at a time.
_decord_readers: dict[tuple, Any] = {}
_decord_broken: set[str] = set()  # files decord hung or failed on: never again in this process


def decord_can_read(info: MediaInfo) -> bool:
    """True when decord would decode the stream `info` chose (it always takes ffmpeg's "best")."""
    if info.video_stream is None:
        return False
    videos = [d for d in info.streams if d["type"] == "video"]
    me = _stream_info(info, info.video_stream)
    return (len(videos) == 1 and videos[0]["index"] == info.video_stream and me["start"] is not None
            and info.fps > 0 and info.path not in _decord_broken)


def _run_with_timeout(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Run fn in a daemon thread: decord's hangs are in native code, where only a thread can leave them."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    th = threading.Thread(target=target, name=f"decord {what}", daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        raise TimeoutError(f"{what} did not return in {timeout_s:g} s (a known decord hang); "
                           "the thread is abandoned and this file will be read with PyAV")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _decord_reader(path: str, w: int, h: int, threads: int = 1) -> Any:
    import decord

    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size, w, h, threads)
    with _decord_lock:
        vr = _decord_readers.get(key)
    if vr is None:
        vr = decord.VideoReader(path, width=w, height=h, ctx=decord.cpu(0), num_threads=max(1, threads))
        with _decord_lock:
            _decord_readers.clear()  # one VOD at a time per process: don't keep old readers alive
            _decord_readers[key] = vr
    return vr


def _decord_indices(info: MediaInfo, vr: Any, t: np.ndarray) -> np.ndarray:
    me = _stream_info(info, info.video_stream)
    fps = float(vr.get_avg_fps())
    if not math.isclose(fps, info.fps, rel_tol=0.01):
        raise RuntimeError(f"decord reads a {fps:.3f} fps stream, not the chosen {info.fps:.3f} fps stream")
    n = len(vr)
    # decord counts packets or trusts nb_frames; indices past the real end hang (dmlc/decord#373).
    expect = math.ceil((me["duration"] or info.duration) * fps) + 1
    if n > expect:
        log.warning("%s: decord reports %d frames, duration * fps allows %d; clamping", info.path, n, expect)
        n = expect
    ts = np.asarray(vr.get_frame_timestamp(range(n)), dtype=np.float64)[:, 0]  # float32 s from stream start
    if not (np.isfinite(ts).all() and (np.diff(ts) > 0).all()):
        raise RuntimeError("decord frame timestamps are not increasing")
    tol = time_tol(fps) + float(np.spacing(np.float32(max(ts[-1], 1.0))))  # + float32 rounding
    # decord pads a truncated file with its last frame; PyAV then says what is wrong.
    last = me["start"] + ts[-1] + 1.0 / fps + TRUNCATED_TOLERANCE_S
    if t.max() > last and (_stream_end(me) or info.duration) > last:
        raise RuntimeError(f"decord's frames end at {last - TRUNCATED_TOLERANCE_S:.2f} s, before {t.max():.2f} s")
    idx = np.searchsorted(ts, t - me["start"] + tol, side="right") - 1
    return np.clip(idx, 0, n - 1)


def _read_frames_decord(info: MediaInfo, t: np.ndarray, w: int, h: int, timeout_s: float,
                        threads: int = 1) -> np.ndarray:
    if info.path in _decord_broken:
        raise RuntimeError("decord failed on this file before")

    def work() -> np.ndarray:
        vr = _decord_reader(info.path, w, h, threads)
        idx = _decord_indices(info, vr, t)
        return np.asarray(vr.get_batch(idx.tolist()).asnumpy())

    try:
        frames = _run_with_timeout(work, timeout_s, f"decord get_batch on {info.path}")
    except BaseException:
        _decord_broken.add(info.path)
        with _decord_lock:
            _decord_readers.clear()
        raise
    if frames.shape != (len(t), h, w, 3) or frames.dtype != np.uint8:
        raise RuntimeError(f"decord returned {frames.shape} {frames.dtype}, expected {(len(t), h, w, 3)} uint8")
    return frames


# -- audio -----------------------------------------------------------------------------------
def read_audio(info: MediaInfo, start: float, end: float, sample_rate: int = 16000,
               audio_path: str | None = None) -> np.ndarray:
    """Mono float32 in [-1, 1] at `sample_rate` for [start, end), exactly round((end-start)*sr) long.

    Zeros past the end of the stream and for a video without audio. With `audio_path`, that
    separate file is read instead (its own t = 0 is the VOD's t = 0).
    """
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
        raise ValueError(f"{info.path}: bad audio span [{start}, {end}): needs 0 <= start <= end")
    n = round((end - start) * sample_rate)
    if audio_path is not None:
        return _read_audio_file(str(audio_path), start, n, sample_rate)
    if info.audio_stream is None or n == 0:
        return np.zeros(n, np.float32)
    return _read_audio_pyav(info, start, n, sample_rate)


def _read_audio_file(path: str, start: float, n: int, sr: int) -> np.ndarray:
    if Path(path).suffix.lower() in (".wav", ".flac"):
        import soundfile as sf

        try:
            native = sf.info(path).samplerate
            if native == sr:  # exact and fast; other rates go through PyAV's resampler below
                i0 = round(start * sr)
                data, _ = sf.read(path, start=i0, stop=i0 + n, dtype="float32", always_2d=True)
                out = np.zeros(n, np.float32)
                out[: len(data)] = data.mean(axis=1)
                return np.clip(out, -1.0, 1.0)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise MediaError(f"{path}: cannot read audio ({e})") from e
    info = probe(path)
    if info.audio_stream is None:
        raise MediaError(f"{path}: the separate audio file has no audio stream")
    return _read_audio_pyav(info, start, n, sr)


def _read_audio_pyav(info: MediaInfo, start: float, n: int, sr: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    end = start + n / sr
    with _open(info.path) as c:
        try:
            s = c.streams[info.audio_stream]
            origin = _origin(c)
            first = round((Fraction(start) + origin) * sr)  # output sample index of out[0]
            frames = _seek_decode(c, s, info.path, "audio", max(0.0, start - AUDIO_PREROLL_S), origin, 0.0)
            # Keep the channels and average them below: swresample's own downmix of stereo is
            # (L + R) / sqrt(2), louder than the plain mean that the soundfile path gives.
            resampler = av.AudioResampler(format="fltp", rate=sr)
            pos = None  # running output position, for frames without pts
            last_t = -math.inf  # end of the last decoded frame
            eof = True
            for k, frame in enumerate(frames):
                if k == 0:
                    frame = align_to_grid(frame, sr)
                t = _frame_time(frame, origin)
                if t is not None:
                    last_t = t + frame.samples / frame.sample_rate
                for o in resampler.resample(frame):
                    pos = _place(out, o, first, sr, pos)
                if t is not None and t > end + 0.1:
                    eof = False  # decoded a little past `end` so the resampler's tail is real signal
                    break
            if eof:
                for o in resampler.resample(None):
                    pos = _place(out, o, first, sr, pos)
        except av.FFmpegError as e:
            raise MediaError(f"{info.path}: decoding audio stream {info.audio_stream} failed ({e})") from e
    declared_end = _stream_end(_stream_info(info, info.audio_stream)) or info.duration
    if eof and last_t < min(end, declared_end) - TRUNCATED_TOLERANCE_S:
        raise MediaError(f"{info.path}: audio ends at {max(last_t, 0):.2f} s but the file says {declared_end:.2f} s: "
                         "truncated or corrupt; download it again")
    return np.clip(out, -1.0, 1.0, out=out)


def align_to_grid(frame: av.AudioFrame, sr: int) -> av.AudioFrame:
    """Drop the first few input samples so the resampler starts on the output grid (t = j / sr).

    The resampler places its output by the first input pts; starting off-grid shifts every
    sample by a fraction of a sample, so a read from the middle would differ from a read from 0.
    """
    rate = frame.sample_rate
    if frame.pts is None or rate == sr or frame.time_base is None:
        return frame
    period = rate // math.gcd(rate, sr)  # input samples between instants on both grids
    p0 = round(frame.pts * frame.time_base * rate)
    k = (-p0) % period
    if k == 0 or k >= frame.samples:
        return frame
    data = frame.to_ndarray()
    step = 1 if frame.format.is_planar else len(frame.layout.channels)
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, k * step:]), format=frame.format.name,
                                     layout=frame.layout.name)
    out.sample_rate = rate
    out.time_base = frame.time_base
    out.pts = frame.pts + round(Fraction(k, rate) / frame.time_base)
    return out


def _place(out: np.ndarray, frame: av.AudioFrame, first: int, sr: int, pos: int | None) -> int:
    """Copy a resampled frame into `out`; returns where the next frame goes.

    Frames follow each other sample by sample: container timestamps jitter (webm stores
    milliseconds, ~0.5 ms off at 44.1 kHz, and some muxers drift by more), and trusting each one
    would leave gaps and overlaps. A pts more than AUDIO_RESYNC_S away is a real gap and is kept.
    """
    if frame.pts is not None:
        at = round(frame.pts * frame.time_base * sr)
        if pos is None or abs(at - pos) > AUDIO_RESYNC_S * sr:
            pos = at
    elif pos is None:
        pos = first
    data = frame.to_ndarray().mean(axis=0)  # planar [channels, samples] -> mono
    a, b = max(pos - first, 0), min(pos - first + len(data), len(out))
    if b > a:
        out[a:b] = data[a - (pos - first): b - (pos - first)]
    return pos + len(data)
