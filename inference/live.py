"""Live chat for a stream while it is happening.

    vod2chat live --run runs/exp1 --source recording.ts --serve 127.0.0.1:8765
    streamlink --stream-url twitch.tv/CHANNEL best | xargs -I{} vod2chat live --run runs/exp1 --source {}
    ffmpeg -i ... -f mpegts - | vod2chat live --run runs/exp1 --source -

The model never sees a frame after the moment it writes for, so it can write while the stream
is still going:

1. A decoding thread follows the source (inference/sources.py: a growing file, an HLS playlist,
   MPEG-TS on stdin) and puts the stream on the ingest grids as it arrives: video row k is the
   frame on screen at k / fps (the last frame with pts <= k / fps), audio is 16 kHz mono
   (channels averaged, as ingest does) cut into 0.96 s VGGish windows [j * hop, (j + 1) * hop).
   t = 0 is the stream's start as this process first sees it.
2. The main thread embeds new rows with the encoders the run's store was made with (the
   fingerprints must match the checkpoint's, as for `generate`) and keeps the last `window_s`.
3. Messages come at Poisson times at the training chat's rate (or --rate). A message at t is
   written once every row it may see (video rows at <= t, audio windows ending <= t) is embedded,
   with the previous messages as chat context: its own, or with --chat the channel's real chat.
4. Each message is a JSON line {"t", "user", "text"} on stdout and in --out (flushed per line),
   and is pushed to the overlay page (--serve; inference/overlay.py).

Failures: a corrupt packet is skipped with a warning; a source with no new data says so and ends
after --stall-timeout; a source that ends (stdin closed, #EXT-X-ENDLIST) gets its last messages
written; Ctrl-C (or SIGTERM) stops at once with every written line kept. All of those exit 0.
"""
from __future__ import annotations

import json
import logging
import math
import queue
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, TextIO

import numpy as np

from vod2chat.config import param
from vod2chat.ingest import align
from vod2chat.ingest.config import EncoderConfig
from vod2chat.inference.sources import ByteSource, open_source
from vod2chat.trainer.sampling import SamplingConfig

# The model code is imported where used: the CLI imports this module for LiveConfig.

log = logging.getLogger(__name__)

MAX_JUMP_S = 10.0  # a timestamp jump larger than this is a discontinuity (HLS, a restarted encoder)
AUDIO_RESYNC_S = 0.1  # smaller audio pts jitter is ignored (as in ingest.media)
MAX_WARNINGS = 10  # corrupt packets reported one by one before they are only counted
QUEUE_ITEMS = 512  # decoded rows waiting for the encoders: bounds memory when the model falls behind
STATUS_EVERY_S = 30.0  # stream seconds between status lines on stderr
BURST_MIN_S = 2.0  # arrival pauses shorter than this are not worth a warning, whatever the rate
BURST_FACTOR = 4.0  # ... nor those under this many intervals between messages


def burst_warning(source: ByteSource, rate: float) -> str | None:
    """Why messages will come in bursts, when a file or pipe delivers the stream in bursts much
    longer than the interval between messages (a message waits for the stream to reach its time)."""
    from vod2chat.inference.sources import HlsSource

    interval = 60.0 / rate
    if isinstance(source, HlsSource) or len(source.gaps) < 3:  # HLS comes in segments by design
        return None
    typical = sorted(source.gaps[-3:])[1]
    if typical < max(BURST_MIN_S, BURST_FACTOR * interval):
        return None
    return (f"{source.name}: the stream arrives in bursts about {typical:.0f} s apart, much longer than the "
            f"{interval:.1f} s between messages, so messages come in bursts too. A writer is buffering: ffmpeg "
            "writing a file or pipe at a low bitrate flushes in 256 KiB steps; add -flush_packets 1 to its output "
            "(README: Live)")


@dataclass
class LiveConfig:
    run: str = param("", "a run directory (its latest checkpoint) or a checkpoint directory", required=True)
    source: str = param("", "a video file still being written (MPEG-TS, Matroska, FLV), an http(s) HLS playlist "
                            "URL, or - for MPEG-TS on stdin", required=True)
    out: str = param("", "also append each message here as a JSON line")
    serve: str = param("", "HOST:PORT of the overlay page for OBS (a browser source), e.g. 127.0.0.1:8765")
    chat: str = param("", "irc://irc.chat.twitch.tv/CHANNEL: the channel's real chat as context (anonymous, read-only)")
    rate: float = param(0.0, "messages per minute; 0: the training chat's rate", ge=0)
    streamer: str = param("", "rate and usernames from this streamer's training VODs only, and its token "
                              "(data.streamer_token)")
    stall_timeout: float = param(30.0, "seconds without new data before the stream counts as over", gt=0)
    format: str = param("", "container format of the source; default: detected (stdin and HLS: mpegts)")
    sampling: SamplingConfig = param(factory=SamplingConfig, flatten=True)
    seed: int = param(0, "sampling seed", ge=0)
    # The encoders the run's store was made with (old configs: their keys at the top level).
    encoders: EncoderConfig = param(factory=EncoderConfig, flatten=True, old_flat=True)
    device: str = param("auto", "auto | cpu | cuda")
    batch: int = param(8, "messages decoded side by side when catching up", ge=1)


@dataclass
class LiveResult:
    messages: list[dict[str, Any]] = field(default_factory=list)
    contexts: list[list[str]] = field(default_factory=list)  # the chat context each message saw
    end: str = ""  # ended | stalled | interrupted | error
    stream_s: float = 0.0  # stream time processed
    wall_s: float = 0.0
    corrupt_packets: int = 0


# -- decoding thread ----------------------------------------------------------------------------
class Decoder(threading.Thread):
    """Demuxes and decodes the source; puts rows on the ingest grids into `out`:
    ("video", k, uint8 [224, 224, 3]) for row k, ("audio", samples) continuing the 16 kHz mono
    signal from sample 0, ("end", reason, stream end in s) last."""

    def __init__(self, source: ByteSource, fmt: str, fps: float, size: tuple[int, int], out: queue.Queue):
        super().__init__(name="live-decoder", daemon=True)
        self.source, self.fmt, self.fps, self.size, self.out = source, fmt, fps, size, out
        self.corrupt = 0
        self.has_video = self.has_audio = True
        self.opened = threading.Event()
        self.stop = threading.Event()

    def put(self, item: tuple) -> None:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _skip(self, what: str, detail: str) -> None:
        self.corrupt += 1
        if self.corrupt <= MAX_WARNINGS:
            log.warning("%s: skipped a corrupt %s packet (%s)%s", self.source.name, what, detail,
                        "; further ones are only counted" if self.corrupt == MAX_WARNINGS else "")

    def run(self) -> None:
        import av

        end_t, reason = 0.0, "ended"
        try:
            try:
                # Short probing: a live source delivers its first seconds in real time.
                c = av.open(self.source, format=self.fmt or None,
                            options={"analyzeduration": "1000000", "probesize": "1000000"})
            except av.FFmpegError as e:
                raise ValueError(f"{self.source.name}: cannot read it as a video stream ({e}); a growing file "
                                 "must be a streamable container (MPEG-TS, Matroska, FLV), not a plain MP4") from e
            with c:
                vs = max(c.streams.video, key=lambda s: s.codec_context.width * s.codec_context.height, default=None)
                aus = max(c.streams.audio, key=lambda s: s.codec_context.sample_rate or 0, default=None)
                self.has_video, self.has_audio = vs is not None, aus is not None
                self.opened.set()
                if vs is None and aus is None:
                    raise ValueError(f"{self.source.name}: no video or audio stream")
                end_t = self._decode(c, vs, aus)
            reason = "stalled" if self.source.stalled else "interrupted" if self.stop.is_set() else "ended"
        except Exception as e:  # the main thread reports it and ends
            log.debug("decoder failed", exc_info=True)
            reason = f"error: {e}"
        finally:
            if getattr(self.source, "error", None) is not None:  # the source's own error (an HLS loop) says more
                reason = f"error: {self.source.error}"
            self.opened.set()
            self.put(("end", reason, end_t))

    def _decode(self, c: Any, vs: Any, aus: Any) -> float:
        """Demux and decode until the source ends or `stop`; the stream end in seconds."""
        import av

        grid = _Grid(self, c, vs, aus)
        streams = [s for s in (vs, aus) if s is not None]
        demux = c.demux(streams)
        while not self.stop.is_set():
            try:
                packet = next(demux)
            except StopIteration:
                break
            except av.FFmpegError as e:  # the demuxer lost sync: it resyncs on the next call
                self._skip("container", str(e))
                demux = c.demux(streams)
                continue
            if packet.size == 0 and packet.pts is None:
                continue  # a flush packet
            kind = "video" if packet.stream is vs else "audio"
            if packet.is_corrupt:
                self._skip(kind, f"at {float((packet.pts or 0) * packet.time_base - grid.origin):.2f} s"
                           if packet.time_base is not None else "no time")
                continue
            try:
                frames = packet.decode()
            except (av.InvalidDataError, av.FFmpegError) as e:
                self._skip(kind, str(e))
                continue
            for frame in frames:
                if kind == "video":
                    grid.video(frame)
                else:
                    grid.audio_frame(frame)
        if self.stop.is_set():
            return max(grid.prev_t, (grid.a_pos or 0) / grid.sr)
        return grid.finish()


class _Grid:
    """Decoded frames and audio onto the ingest grids, put on the decoder's queue as they come:
    video row k is the frame on screen at k / fps, audio continues the 16 kHz mono signal. A
    timestamp jump over MAX_JUMP_S is a discontinuity the clock runs through."""

    def __init__(self, dec: Decoder, c: Any, vs: Any, aus: Any):
        import av

        from vod2chat.ingest.media import time_tol

        self.dec, self.put, self.name = dec, dec.put, dec.source.name
        self.origin = Fraction(c.start_time or 0, av.time_base)
        src_fps = float(vs.average_rate or vs.guessed_rate or 30) if vs is not None else 30.0
        self.tol, self.frame_dt = time_tol(src_fps), 1.0 / src_fps
        self.next_row, self.prev, self.prev_t, self.v_shift = 0, None, -math.inf, 0.0
        self.rgb_of: tuple[Any, np.ndarray | None] = (None, None)
        self.resampler = av.AudioResampler(format="fltp", rate=align.AUDIO_SR) if aus is not None else None
        self.sr = align.AUDIO_SR
        self.a_pos: int | None = None  # samples sent so far
        self.a_shift, self.a_first = 0, True

    def row(self, frame: Any) -> np.ndarray:
        if self.rgb_of[0] is not frame:  # several rows can fall on one frame: scale it once
            w, h = self.dec.size
            self.rgb_of = (frame, frame.reformat(w, h, "rgb24", interpolation="BILINEAR").to_ndarray())
        return self.rgb_of[1]

    def video(self, frame: Any) -> None:
        prev, prev_t, frame_dt = self.prev, self.prev_t, self.frame_dt
        t = float(frame.time - self.origin) + self.v_shift if frame.pts is not None else prev_t + frame_dt
        if prev is not None and not (-1.0 < t - prev_t < MAX_JUMP_S):
            log.warning("%s: video timestamps jump from %.2f to %.2f s: a discontinuity; the clock goes on",
                        self.name, prev_t, t)
            self.v_shift += prev_t + frame_dt - t
            t = prev_t + frame_dt
        while self.next_row / self.dec.fps + self.tol < t:  # rows before this frame: the previous frame (the first, if none)
            self.put(("video", self.next_row, self.row(prev if prev is not None else frame)))
            self.next_row += 1
        self.prev, self.prev_t = frame, t

    def audio_frame(self, frame: Any) -> None:
        from vod2chat.ingest.media import align_to_grid

        if self.a_first:
            frame, self.a_first = align_to_grid(frame, self.sr), False
        for o in self.resampler.resample(frame):
            self.audio(o)

    def audio(self, o: Any) -> None:
        sr = self.sr
        data = o.to_ndarray().mean(axis=0).astype(np.float32)
        at = round((o.time - self.origin) * sr) + self.a_shift if o.pts is not None else self.a_pos
        if self.a_pos is None:
            self.a_pos = 0
            if at is not None and at > 0:  # the stream's audio starts after t = 0: silence until then
                self.put(("audio", np.zeros(min(at, int(MAX_JUMP_S * sr)), np.float32)))
                self.a_pos = min(at, int(MAX_JUMP_S * sr))
            at = self.a_pos if at is None else at
        gap = at - self.a_pos
        if abs(gap) > MAX_JUMP_S * sr:
            log.warning("%s: audio timestamps jump by %.2f s: a discontinuity; the clock goes on", self.name, gap / sr)
            self.a_shift -= gap
        elif gap > AUDIO_RESYNC_S * sr:  # a real gap: silence
            self.put(("audio", np.zeros(gap, np.float32)))
            self.a_pos += gap
        elif gap < -AUDIO_RESYNC_S * sr:  # overlap: keep what was sent
            data = data[-gap:]
        if len(data):
            self.put(("audio", data))
            self.a_pos += len(data)

    def finish(self) -> float:
        """The end: rows up to the last frame's end, and the resampler's tail; the stream end in s."""
        v_end = self.prev_t + self.frame_dt if self.prev is not None else 0.0
        if self.prev is not None:
            while self.next_row / self.dec.fps < v_end - 1e-9:
                self.put(("video", self.next_row, self.row(self.prev)))
                self.next_row += 1
        if self.resampler is not None and self.a_pos is not None:
            for o in self.resampler.resample(None):
                self.audio(o)
        return max(v_end, (self.a_pos or 0) / self.sr)


class Writer:
    """JSON lines to stdout and --out (each flushed as written), and to the overlay."""

    def __init__(self, out: str, stdout: TextIO, publish: Callable[[dict[str, Any]], None] | None):
        self.stdout, self.publish = stdout, publish
        self.file = open(out, "a", encoding="utf-8") if out else None

    def write(self, msg: dict[str, Any]) -> None:
        line = json.dumps(msg, ensure_ascii=False) + "\n"
        if self.file is not None:
            self.file.write(line)
            self.file.flush()
        if self.stdout is not None:
            try:
                self.stdout.write(line)
                self.stdout.flush()
            except BrokenPipeError:  # `| head`, a closed terminal: the file and the page go on
                log.warning("stdout was closed: messages go on to --out and the overlay only")
                self.stdout = None
        if self.publish is not None:
            self.publish(msg)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


# -- the loop -----------------------------------------------------------------------------------
class Live:
    def __init__(self, cfg: LiveConfig, stdout: TextIO | None = None):
        from vod2chat.inference.generate import build_encoders
        from vod2chat.inference.moments import check_streamer, resolve_device, training_chat
        from vod2chat.trainer import checkpoint

        if not cfg.run or not cfg.source:
            raise ValueError("live needs --run (a trained run) and --source (a growing file, an HLS URL, or -)")
        if cfg.stall_timeout <= 0:
            raise ValueError(f"--stall-timeout must be > 0 seconds, got {cfg.stall_timeout}")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model, self.tok, run_cfg, meta = checkpoint.load_run(cfg.run, self.device)
        self.data = run_cfg.data
        check_streamer(self.tok, self.data, cfg.streamer, cfg.run)
        self.enc = build_encoders(cfg.encoders, meta, str(self.device), cfg.run, cfg.source)
        self.fps = self.enc.fps
        self.rate, self.users = training_chat(self.data, cfg.streamer, cfg.rate)
        self.sc = cfg.sampling.resolved(self.data.max_message_tokens)
        self.stdout = stdout or sys.stdout
        self.stop = threading.Event()

    def run(self, publish: Callable[[dict[str, Any]], None] | None = None,
            real_chat: Callable[[int], list[str]] | None = None) -> LiveResult:
        import torch

        cfg, data = self.cfg, self.data
        rng = np.random.default_rng(cfg.seed)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        res = LiveResult()
        source = open_source(cfg.source, cfg.stall_timeout)
        q: queue.Queue = queue.Queue(maxsize=QUEUE_ITEMS)
        fmt = cfg.format or ("mpegts" if cfg.source == "-" or "://" in cfg.source else "")
        dec = Decoder(source, fmt, self.fps, self.enc.video.input_size, q)
        writer = Writer(cfg.out, self.stdout, publish)
        rows = _Rows(self.enc, self.fps)
        history: list[str] = []
        next_t = float(rng.exponential(60.0 / self.rate))
        t_wall0, next_status = time.perf_counter(), STATUS_EVERY_S
        end: tuple | None = None
        warned_bursts = False
        print(f"live: following {cfg.source} at {self.rate:.1f} messages/min (window {data.window_s:g} s, "
              f"{self.fps:g} fps){'; real chat from ' + cfg.chat if cfg.chat else ''}", file=sys.stderr, flush=True)
        dec.start()
        try:
            while end is None:
                if self.stop.is_set():
                    raise KeyboardInterrupt
                items = _drain(q)
                if not items:
                    continue
                if not warned_bursts and (warning := burst_warning(source, self.rate)):
                    log.warning(warning)
                    warned_bursts = True
                end = rows.add(items)
                rows.embed()
                ready = end[2] + 1e-9 if end is not None else rows.ready(dec)
                times = []
                while next_t < ready:
                    times.append(round(next_t, 2))
                    next_t += float(rng.exponential(60.0 / self.rate))
                if times:
                    history = self._write(times, rows.sample(), history, real_chat, rng, gen, writer, res)
                rows.drop_before(min(next_t, ready) - data.window_s - 1.0)  # rows no later message can see
                res.stream_s = min(ready, end[2]) if end is not None else (ready if math.isfinite(ready) else 0.0)
                if res.stream_s >= next_status:
                    wall = time.perf_counter() - t_wall0
                    print(f"live: stream {res.stream_s / 60:.1f} min, {len(res.messages)} messages, "
                          f"{res.stream_s / max(wall, 1e-9):.2f} stream-s per wall-s (waiting on the source "
                          f"{source.wait_s:.0f} s of {wall:.0f} s)", file=sys.stderr, flush=True)
                    next_status += STATUS_EVERY_S
            res.end = end[1]
        except KeyboardInterrupt:
            res.end = "interrupted"
        finally:
            dec.stop.set()
            source.close()
            writer.close()
            res.wall_s = time.perf_counter() - t_wall0
            res.corrupt_packets = dec.corrupt
        return self._finish(res, source.name)

    def _write(self, times: list[float], sample: Any, history: list[str],
               real_chat: Callable[[int], list[str]] | None, rng: np.random.Generator, gen: Any, writer: Writer,
               res: LiveResult) -> list[str]:
        """The messages at `times`, written; the model's own chat history after them."""
        from vod2chat.inference.moments import chat_texts, draw_users

        data = self.data
        ctx = real_chat(data.context_messages) if real_chat is not None else history
        # Stretches of at least 4: live decodes the few messages due since the last round.
        texts = chat_texts(self.model, self.tok, data, sample, times, self.sc, self.cfg.batch, self.device, gen,
                           self.cfg.streamer, history=ctx, min_len=4)
        for t, text in zip(times, texts):
            if not text:
                continue
            msg = {"t": t, "user": draw_users(1, self.users, rng)[0], "text": text}
            writer.write(msg)
            res.messages.append(msg)
            res.contexts.append(list(ctx[-data.context_messages :]) if data.context_messages else [])
            if real_chat is None:
                history = (history + [text])[-max(1, data.context_messages) :]
        return history

    def _finish(self, res: LiveResult, name: str) -> LiveResult:
        if res.corrupt_packets:
            log.warning("%s: %d corrupt packets skipped", name, res.corrupt_packets)
        print(f"live: {res.end}; {len(res.messages)} messages over {res.stream_s:.1f} s of stream "
              f"in {res.wall_s:.1f} s", file=sys.stderr, flush=True)
        if res.end.startswith("error"):
            raise ValueError(f"live: {self.cfg.source}: {res.end[len('error: '):]}")
        return res


def _drain(q: queue.Queue) -> list[tuple]:
    """The next decoded item (waiting a little) and everything already decoded: batches when catching up."""
    try:
        items = [q.get(timeout=0.2)]
    except queue.Empty:
        return []
    while len(items) < 64:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            break
    return items


class _Rows:
    """The embedded rows the next messages may see: video rows [v0, v0 + len(video)), audio rows
    [a0, a0 + len(audio)), and decoded frames and samples not embedded yet."""

    def __init__(self, enc: Any, fps: float):
        self.enc, self.fps = enc, fps
        self.video: deque[np.ndarray] = deque()
        self.audio: deque[np.ndarray] = deque()
        self.v0 = self.a0 = 0
        self.frames: list[tuple[int, np.ndarray]] = []
        self.wave = np.zeros(0, np.float32)
        self.wave0 = 0  # sample index of wave[0]

    def add(self, items: list[tuple]) -> tuple | None:
        """Take decoded items; the end item if one came."""
        end = None
        for it in items:
            if it[0] == "video":
                self.frames.append((it[1], it[2]))
            elif it[0] == "audio":
                self.wave = np.concatenate([self.wave, it[1]])
            else:
                end = it
        return end

    def embed(self) -> None:
        """Embed what is complete: every decoded frame, every whole audio window."""
        if self.frames:
            self.video.extend(self.enc.video.encode(np.stack([f for _, f in self.frames])))
            self.frames.clear()
        win = align.AUDIO_HOP_SAMPLES
        n_win = len(self.wave) // win
        if n_win:
            self.audio.extend(self.enc.audio.encode(self.wave[: n_win * win]))
            self.wave, self.wave0 = self.wave[n_win * win :], self.wave0 + n_win * win

    def ready(self, dec: Decoder) -> float:
        """The time up to which a message has every row it may see embedded."""
        hop = align.AUDIO_HOP
        ready_v = (self.v0 + len(self.video)) / self.fps if dec.has_video else math.inf
        ready_a = (self.a0 + len(self.audio) + 1) * hop if dec.has_audio else math.inf
        # Grid rows make a message at t answerable up to a row early (1/fps, one hop), but a
        # message stamped t is never written before the stream itself reached t: the
        # audio decoded so far (embedded or not) is where the stream is.
        heard = (self.wave0 + len(self.wave)) / align.AUDIO_SR if dec.has_audio else math.inf
        return min(ready_v, ready_a, heard)

    def sample(self) -> Any:
        """The rows kept, as the Sample the model's windows are cut from (the stream is one segment)."""
        from vod2chat.shards.schema import ChatBlock, Sample, SegmentMeta, sample_key

        hop = align.AUDIO_HOP
        t0, t1 = min(self.v0 / self.fps, self.a0 * hop), max((self.v0 + len(self.video)) / self.fps,
                                                              (self.a0 + len(self.audio)) * hop)
        meta = SegmentMeta(streamer="live", vod_id="stream", segment=0, start=t0, end=t1, video_t0=self.v0 / self.fps,
                           fps=self.fps, audio_t0=self.a0 * hop, audio_hop=hop, audio_win=hop)
        return Sample(sample_key("live", "stream", 0), np.asarray(self.video, np.float16).reshape(-1, self.enc.video.dim),
                      np.asarray(self.audio, np.float16).reshape(-1, self.enc.audio.dim), ChatBlock().as_dict(),
                      meta.as_dict())

    def drop_before(self, keep_from: float) -> None:
        hop = align.AUDIO_HOP
        while self.video and (self.v0 + 1) / self.fps < keep_from:
            self.video.popleft()
            self.v0 += 1
        while self.audio and (self.a0 + 1) * hop + hop < keep_from:
            self.audio.popleft()
            self.a0 += 1


def main(cfg: LiveConfig) -> LiveResult:
    """Follow the source until it ends, stalls or is interrupted; serve the overlay and read the
    channel's chat if asked."""
    live = Live(cfg)
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C and SIGTERM (a process manager, OBS closing a script) ask the loop to stop between
        # two lines, so no line is ever half written; a second Ctrl-C stops at once.
        def stop(signum: int, frame: Any) -> None:
            if live.stop.is_set():
                raise KeyboardInterrupt
            live.stop.set()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
    overlay = irc = None
    try:
        if cfg.serve:
            from vod2chat.inference.overlay import Overlay

            overlay = Overlay.start(cfg.serve)
            print(f"live: overlay at {overlay.url} (add it to OBS as a browser source)", file=sys.stderr, flush=True)
        if cfg.chat:
            from vod2chat.inference.twitch_irc import IrcChat

            irc = IrcChat.start(cfg.chat)
        return live.run(overlay.publish if overlay else None, irc.recent if irc else None)
    finally:
        if irc is not None:
            irc.close()
        if overlay is not None:
            overlay.close()
