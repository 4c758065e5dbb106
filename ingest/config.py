"""The ingest stage's one config: what to read, how to cut and embed it, where to write it."""

from __future__ import annotations

from dataclasses import dataclass

from vod2chat.config import param


@dataclass
class IngestConfig:
    store: str = param("./store", "store directory or fsspec URL")
    streamer: str = param("", "channel the VODs belong to (required unless inputs are under {streamer}/ dirs)")
    inputs: list[str] = param(factory=list, help="video and chat files, or directories of them, paired by VOD id", positional=True)
    # Cutting: part of each VOD's identity (re-ingesting a VOD with others needs --replace). VODs of
    # one store may differ; the trainer refuses VODs whose look-back or context is shorter than its
    # data.window_s / data.context_messages. fps is part of the video fingerprint: store-wide.
    segment_s: float = param(30.0, "seconds per segment")
    lookback_s: float = param(20.0, "features carried before each segment, so early messages see a full window")
    fps: float = param(1.0, "video frames embedded per second")
    context_messages: int = param(8, "previous messages stored with each segment")
    segments_per_shard: int = param(120, "one shard = one unit of parallel work")
    # Encoders: a path, None for the torch hub cache, or "random" (explicit opt-in, fingerprinted).
    video_weights: str | None = param(None, "ResNet-50 state_dict path; 'random' for random-initialised encoders (recorded in the store); default: the torch hub cache")
    audio_weights: str | None = param(None, "VGGish state_dict path, or 'random'; default: the torch hub cache")
    audio_pca: str | None = param(None, "VGGish PCA params path")
    device: str = param("auto", "auto | cpu | cuda")
    # In the encoders' fingerprints: a store never mixes precisions. Its first ingest pins one (store.json).
    precision: str = param("auto", "fp32 | bf16 | fp16 | auto: the store's; for a new store bf16 on CUDA and on CPUs "
                           "with AVX512-BF16/AMX, else fp32 (VOD2CHAT_PRECISION=fp32|bf16 overrides the CPU's)")
    video_batch: int = param(32, "frames per ResNet-50 forward pass")
    # Throughput: torch threads are the actor's CPUs.
    prefetch: bool = param(True, "decode the next frames or audio in a thread while the encoders run")
    decode_threads: int = param(0, "decoder threads (0: 1 beside torch on a CPU actor that decodes ahead, else the actor's CPUs)")
    seek_keyframes: bool = param(True, "PyAV: jump to the keyframe before a sampled time instead of decoding up to it")
    decode_device: str = param("auto", "auto (NVDEC when the encoders run on CUDA, else CPU) | cpu | cuda")
    # Media and chat details.
    video_stream: int | None = param(None, "stream index (default: the best)")
    audio_stream: int | None = param(None, "stream index (default: the best)")
    decode_backend: str = param("auto", "auto (pyav) | decord | pyav")
    stream_start: float | None = param(None, "unix seconds, for raw IRC logs")
    # Inputs given as s3:// or gs:// URLs are fetched once per node into this cache (LRU, bounded).
    input_cache: str = param("~/.cache/vod2chat/inputs", "where URL inputs are fetched to")
    input_cache_gb: float = param(100.0, "input cache bound (least recently used out first)")
    replace: bool = param(False, "re-ingest a VOD whose record has other settings")
    strict: bool = param(False, "fail a VOD that keeps less than half of its chat (or none) instead of a warning")
    # Ray fan-out.
    address: str | None = param(None, "None: a local Ray; 'auto': the cluster this node belongs to")
    num_actors: int = param(0, "0: one per GPU, else one per cpus_per_actor CPUs")
    # Capped at the CPUs a node has, so a 2-core machine runs one actor on both cores (two torch
    # processes on the same cores slow each other down).
    cpus_per_actor: float = param(4.0, "Ray CPUs each actor reserves and uses (torch and decoder threads)")
    parts_in_flight: int = param(2, "parts queued per actor, so the next one waits there, not in the driver")
    max_retries: int = param(2, "retries of a part whose actor died")
    progress: bool = param(True, "progress bars")
