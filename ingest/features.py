"""Features for a stretch of a video: the one path from media to feature rows.

The ingest worker embeds a part of a VOD with `embed_rows`; generate (and live mode) embed a
time range with `embed_range`, which puts the rows on the same global grids as the store (video
row k at k / fps, audio row j over [j * hop, (j + 1) * hop)) and returns them as a Sample whose
meta says where they sit in time, exactly as a stored segment does:

    enc = Encoders(cfg.encoders, device, fps)             # once per process
    sample = embed_range(probe(path), start, end, window_s, enc, DecodeConfig())
"""

from __future__ import annotations

import collections
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import torch

from vod2chat.ingest import align
from vod2chat.ingest.config import DecodeConfig, EncoderConfig, IngestConfig
from vod2chat.ingest.encoders import AudioEncoder, VideoEncoder
from vod2chat.ingest.media import MediaInfo, read_audio, read_frames
from vod2chat.shards.schema import ChatBlock, Sample, SegmentMeta, sample_key

# Frames decoded and embedded at a time: bounds memory on 4-hour VODs, and is the grain of
# decoding ahead (the first chunk of a part is always waited for), so one ResNet-50 batch.
VIDEO_CHUNK_ROWS = 32
AUDIO_CHUNK_ROWS = 256  # VGGish windows at a time (~4 min of 16 kHz audio)


class Encoders:
    """The two feature encoders, built once per process (or per Ray actor) and reused, with the
    thread that decodes ahead of them and the seconds spent per stage."""

    def __init__(self, cfg: EncoderConfig, device: str = "auto", fps: float = 1.0):
        """device: auto | cpu | cuda (or a torch device name). fps: the video rows per second the
        features are made at (the store's; part of the video fingerprint)."""
        device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.video = VideoEncoder(weights=cfg.video_weights, device=device, batch_size=cfg.video_batch,
                                  precision=cfg.precision)
        self.audio = AudioEncoder(weights=cfg.audio_weights, pca=cfg.audio_pca, device=device,
                                  precision=cfg.precision)
        self.fps = fps
        self.stages: collections.Counter[str] = collections.Counter()  # seconds per stage, see take_stages
        self._decoder: ThreadPoolExecutor | None = None

    def decoder(self) -> ThreadPoolExecutor:
        """One thread that decodes the next chunk while an encoder runs on this one (decoders
        release the GIL); one, so decord's reader is never used by two threads at once."""
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(1, thread_name_prefix="vod2chat-decode")
        return self._decoder

    def take_stages(self) -> dict[str, float]:
        """Seconds per stage since the last call (decode, ResNet-50, VGGish, write, waiting)."""
        out, self.stages = dict(self.stages), collections.Counter()
        return out

    def fingerprints(self) -> dict[str, dict[str, Any]]:
        # fps is part of the video feature space: the same frames at 2 fps mean other rows.
        return {"video": {**self.video.fingerprint, "fps": self.fps}, "audio": dict(self.audio.fingerprint)}


def ingest_encoders(cfg: IngestConfig) -> Encoders:
    """An ingest's encoders: its encoders section, on its device, at its fps."""
    return Encoders(cfg.encoders, cfg.device, cfg.fps)


def _timed(stages: collections.Counter[str], name: str, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
    t0 = time.perf_counter()
    try:
        return fn(*a, **kw)
    finally:
        stages[name] += time.perf_counter() - t0


def embed_rows(media: MediaInfo, video_rows: range, audio_rows: range, enc: Encoders, cfg: DecodeConfig,
               audio_path: str | None = None, progress: Callable[[int], Any] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Video rows (frames at k / enc.fps through ResNet-50) and audio rows (VGGish windows), chunk
    by chunk. With cfg.prefetch the next chunk (video, then audio) is decoded in enc's decode
    thread while the encoder runs on this one; time per stage is added to enc.stages.
    `progress` (a progress bar's update) is called with the rows of each chunk embedded."""
    hw = cfg.decode_device if cfg.decode_device != "auto" else enc.video.device.type
    # Decoder threads: on a CPU actor decoding ahead runs beside torch's threads on the same
    # cores, so one thread (more only oversubscribe them); with a GPU the CPUs are the decoder's.
    auto_threads = 1 if cfg.prefetch and enc.video.device.type == "cpu" else torch.get_num_threads()
    st, threads = enc.stages, cfg.decode_threads or auto_threads
    hwaccel = "cuda" if hw == "cuda" else None
    steps: list[tuple[Callable[[], Any], Callable[[Any], np.ndarray], str]] = []
    for c in range(video_rows.start, video_rows.stop, VIDEO_CHUNK_ROWS):
        times = [k / enc.fps for k in range(c, min(c + VIDEO_CHUNK_ROWS, video_rows.stop))]
        steps.append((lambda times=times: _timed(st, "decode video", read_frames, media, times,
                                                 size=enc.video.input_size, backend=cfg.decode_backend,
                                                 threads=threads, seek_keyframes=cfg.seek_keyframes,
                                                 hwaccel=hwaccel),
                      lambda frames: _timed(st, "ResNet-50", enc.video.encode, frames), "video"))

    def vggish(wave: np.ndarray, n: int) -> np.ndarray:
        feats = _timed(st, "VGGish", enc.audio.encode, wave)
        if len(feats) != n:
            raise RuntimeError(f"{media.path}: audio encoder gave {len(feats)} rows for {n} windows")
        return feats

    for c in range(audio_rows.start, audio_rows.stop, AUDIO_CHUNK_ROWS):
        stop = min(c + AUDIO_CHUNK_ROWS, audio_rows.stop)
        steps.append((lambda c=c, stop=stop: _timed(st, "decode audio", read_audio, media, c * align.AUDIO_HOP,
                                                    stop * align.AUDIO_HOP, align.AUDIO_SR, audio_path=audio_path),
                      lambda wave, n=stop - c: vggish(wave, n), "audio"))
    out: dict[str, list[np.ndarray]] = {"video": [np.zeros((0, enc.video.dim), np.float16)],
                                        "audio": [np.zeros((0, enc.audio.dim), np.float16)]}
    pending: Future | None = enc.decoder().submit(steps[0][0]) if cfg.prefetch and steps else None
    for i, (decode, encode, kind) in enumerate(steps):
        if pending is None:
            data = decode()
        else:
            data = _timed(st, "waiting for decode", pending.result)
            pending = enc.decoder().submit(steps[i + 1][0]) if i + 1 < len(steps) else None
        out[kind].append(encode(data))
        if progress is not None:
            progress(len(out[kind][-1]))
    return np.concatenate(out["video"]), np.concatenate(out["audio"])


def range_rows(duration: float, start: float, end: float, window_s: float, fps: float) -> tuple[range, range, float]:
    """(video rows, audio rows, first second) that a message in [start, end] can see, reaching
    window_s back: video rows shown in [start - window_s, end], audio windows heard by end."""
    hop = align.AUDIO_HOP
    lo = max(0.0, start - window_s)
    nv, na = align.n_video_rows(duration, fps), align.n_audio_rows(duration)
    v0 = min(nv, math.ceil(lo * fps - 1e-9))
    v1 = min(nv, math.floor(end * fps + 1e-9) + 1)
    a0 = min(na, math.floor(lo / hop))
    a1 = min(na, math.floor(end / hop + 1e-9))
    return range(v0, max(v0, v1)), range(a0, max(a0, a1)), lo


def embed_range(media: MediaInfo, start: float, end: float, window_s: float, enc: Encoders, cfg: DecodeConfig,
                streamer: str = "range", vod_id: str = "range", segment: int = 0,
                progress: Callable[[int], Any] | None = None) -> Sample:
    """Feature rows on the store's global grids for messages in [start, end] (and window_s before),
    as a Sample with empty chat: what generate and live mode feed the model. A stream the media
    lacks gives no rows (the model masks that modality). `progress`: as for embed_rows."""
    video_rows, audio_rows, lo = range_rows(media.duration, start, end, window_s, enc.fps)
    video, audio = embed_rows(media, video_rows if media.video_stream is not None else range(0),
                              audio_rows if media.audio_stream is not None else range(0), enc, cfg,
                              progress=progress)
    hop = align.AUDIO_HOP
    meta = SegmentMeta(streamer=streamer, vod_id=vod_id, segment=segment, start=start, end=end, lookback=start - lo,
                       video_t0=video_rows.start / enc.fps, fps=enc.fps, audio_t0=audio_rows.start * hop,
                       audio_hop=hop, audio_win=hop)
    return Sample(sample_key(streamer, vod_id, segment), video, audio, ChatBlock().as_dict(), meta.as_dict())
