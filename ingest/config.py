"""The ingest stage's one config: what to read, how to cut and embed it, where to write it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IngestConfig:
    store: str = "./store"  # directory or fsspec URL
    streamer: str = ""  # required unless inputs are under {streamer}/ dirs
    inputs: list[str] = field(default_factory=list)  # video + chat files or directories, paired by VOD id
    # Cutting: part of each VOD's identity (re-ingesting a VOD with others needs --replace). VODs of
    # one store may differ; the trainer refuses VODs whose look-back or context is shorter than its
    # data.window_s / data.context_messages. fps is part of the video fingerprint: store-wide.
    segment_s: float = 30.0
    lookback_s: float = 20.0  # features carried before each segment, so early messages see a full window
    fps: float = 1.0
    context_messages: int = 8
    segments_per_shard: int = 120  # one shard = one unit of parallel work
    # Encoders: a path, None for the torch hub cache, or "random" (explicit opt-in, fingerprinted).
    video_weights: str | None = None
    audio_weights: str | None = None
    audio_pca: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    video_batch: int = 32
    # Media and chat details.
    video_stream: int | None = None
    audio_stream: int | None = None
    decode_backend: str = "auto"  # auto | decord | pyav
    stream_start: float | None = None  # unix seconds, for raw IRC logs
    # Inputs given as s3:// or gs:// URLs are fetched once per node into this cache (LRU, bounded).
    input_cache: str = "~/.cache/vod2chat/inputs"
    input_cache_gb: float = 100.0
    replace: bool = False  # re-ingest a VOD whose record has other settings
    strict: bool = False  # a VOD keeping less than half of its chat (or none) fails instead of a warning
    # Ray fan-out.
    address: str | None = None  # None: a local Ray; "auto": the cluster this node belongs to
    num_actors: int = 0  # 0: one per GPU, else one per 2 CPUs
    cpus_per_actor: float = 1.0
    max_retries: int = 2
    progress: bool = True
