"""The ingest stage's one config: what to read, how to cut and embed it, where to write it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IngestConfig:
    store: str = "./store"  # directory or fsspec URL
    streamer: str = ""  # required unless inputs are under {streamer}/ dirs
    inputs: list[str] = field(default_factory=list)  # video + chat files or directories, paired by VOD id
    # Cutting and sampling: these are part of the store's identity (re-ingest with others is refused).
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
    # fp32 | bf16 | fp16 | auto (bf16 on CUDA and on CPUs with AVX512-BF16/AMX, else fp32). In the
    # encoders' fingerprints: a store never mixes precisions, so give it explicitly on mixed clusters.
    precision: str = "auto"
    video_batch: int = 32
    # Throughput: the next frames or audio are decoded in a thread while the encoders run; decoder
    # threads (0: as many as the actor's CPUs); torch threads are the actor's CPUs.
    prefetch: bool = True
    decode_threads: int = 0
    seek_keyframes: bool = True  # PyAV: jump to the keyframe before a sampled time instead of decoding up to it
    decode_device: str = "auto"  # auto (NVDEC when the encoders run on CUDA, else CPU) | cpu | cuda
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
    num_actors: int = 0  # 0: one per GPU, else one per cpus_per_actor CPUs
    # CPUs each actor reserves and uses (torch and decoder threads); capped at the CPUs there are,
    # so a 2-core machine runs one actor on both cores (two torch processes there slow each other).
    cpus_per_actor: float = 4.0
    parts_in_flight: int = 2  # per actor: the next part is queued there while one runs
    max_retries: int = 2
    progress: bool = True
