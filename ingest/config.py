"""The ingest stage's one config: what to read, how to cut and embed it, where to write it."""

from __future__ import annotations

from dataclasses import dataclass

from vod2chat.config import param


@dataclass
class EncoderConfig:
    """The feature encoders (ResNet-50, VGGish): the one section ingest, generate and live hold
    (flags without a prefix: --video-weights, --precision). The device and the frame rate are the
    stage's: the device also runs generate's model, and fps is a cutting setting of the store."""
    # A path, None for the torch hub cache, or "random" (explicit opt-in, fingerprinted).
    video_weights: str | None = param(None, "ResNet-50 state_dict path; 'random' for random-initialised encoders "
                                            "(recorded in the store; generate and live: only for a run on such a "
                                            "store); default: the torch hub cache")
    audio_weights: str | None = param(None, "VGGish state_dict path, or 'random'; default: the torch hub cache")
    audio_pca: str | None = param(None, "VGGish PCA params path")
    # In the encoders' fingerprints: a store never mixes precisions. Its first ingest pins one (store.json).
    precision: str = param("auto", "fp32 | bf16 | fp16 | auto: the store's (generate and live: the run's); for a "
                           "new store bf16 on CUDA and on CPUs with AVX512-BF16/AMX, else fp32 "
                           "(VOD2CHAT_PRECISION=fp32|bf16 overrides the CPU's)")
    video_batch: int = param(32, "frames per ResNet-50 forward pass", ge=1)


@dataclass
class DecodeConfig:
    """How media is decoded for the encoders (ingest; generate uses the defaults). Throughput only:
    not in any fingerprint."""
    # Throughput: torch threads are the actor's CPUs.
    prefetch: bool = param(True, "decode the next frames or audio in a thread while the encoders run")
    decode_threads: int = param(0, "decoder threads (0: 1 beside torch on a CPU actor that decodes ahead, else the actor's CPUs)", ge=0)
    seek_keyframes: bool = param(True, "PyAV: jump to the keyframe before a sampled time instead of decoding up to it")
    decode_device: str = param("auto", "auto (NVDEC when the encoders run on CUDA, else CPU) | cpu | cuda")
    decode_backend: str = param("auto", "auto (pyav) | decord (optional: pip install 'vod2chat[decord]') | pyav")


@dataclass
class IngestConfig:
    store: str = param("./store", "store directory or fsspec URL")
    streamer: str = param("", "channel the VODs belong to (required unless inputs are under {streamer}/ dirs)")
    inputs: list[str] = param(factory=list, help="video and chat files, or directories of them, paired by VOD id", positional=True)
    # Cutting: part of each VOD's identity (re-ingesting a VOD with others needs --replace). VODs of
    # one store may differ; the trainer refuses VODs whose look-back or context is shorter than its
    # data.window_s / data.context_messages. fps is part of the video fingerprint: store-wide.
    segment_s: float = param(30.0, "seconds per segment", gt=0)
    lookback_s: float = param(20.0, "features carried before each segment, so early messages see a full window", ge=0)
    fps: float = param(1.0, "video frames embedded per second", gt=0)
    context_messages: int = param(8, "previous messages stored with each segment", ge=0)
    segments_per_shard: int = param(120, "one shard = one unit of parallel work", ge=1)
    # Encoders and decoding: sections shared with generate and live (flags and old top-level keys unprefixed).
    encoders: EncoderConfig = param(factory=EncoderConfig, flatten=True, old_flat=True)
    decode: DecodeConfig = param(factory=DecodeConfig, flatten=True, old_flat=True)
    device: str = param("auto", "auto | cpu | cuda")
    # Media and chat details.
    video_stream: int | None = param(None, "stream index (default: the best)", ge=0)
    audio_stream: int | None = param(None, "stream index (default: the best)", ge=0)
    stream_start: float | None = param(None, "unix seconds, for raw IRC logs", ge=0)
    # Hostile or broken chat logs: a 100 MB message, a small .json.gz that inflates to gigabytes.
    max_message_chars: int = param(500, "chat messages longer than this are cut (Twitch's own limit); counted per VOD",
                                   ge=1)
    chat_max_mb: float = param(16.0, "a chat log may read (decompressed) to this many MiB plus chat_max_kb_per_s per "
                                     "second of its video; past that its VOD fails", gt=0)
    chat_max_kb_per_s: float = param(128.0, "chat log size allowed per second of video, KiB (see chat_max_mb)", ge=0)
    # Inputs given as s3:// or gs:// URLs are fetched once per node into this cache (LRU, bounded).
    input_cache: str = param("~/.cache/vod2chat/inputs", "where URL inputs are fetched to")
    input_cache_gb: float = param(100.0, "input cache bound (least recently used out first)", ge=0)
    replace: bool = param(False, "re-ingest a VOD whose record has other settings")
    strict: bool = param(False, "fail a VOD that keeps less than half of its chat (or none) instead of a warning")
    # Ray fan-out.
    address: str | None = param(None, "None: a local Ray; 'auto': the cluster this node belongs to")
    num_actors: int = param(0, "0: one per GPU, else one per cpus_per_actor CPUs", ge=0)
    # Capped at the CPUs a node has, so a 2-core machine runs one actor on both cores (two torch
    # processes on the same cores slow each other down).
    cpus_per_actor: float = param(4.0, "Ray CPUs each actor reserves and uses (torch and decoder threads)", gt=0)
    parts_in_flight: int = param(2, "parts queued per actor, so the next one waits there, not in the driver", ge=1)
    max_retries: int = param(2, "retries of a part whose actor died", ge=0)
    progress: bool = param(True, "progress bars")
    dry_run: bool = param(False, "list each video/chat pair with its detected chat format and what cannot be paired; "
                                 "start nothing")

    def chat_max_bytes(self, duration: float) -> int:
        """The size cap of the chat log of a VOD lasting `duration` seconds."""
        return int(self.chat_max_mb * 2**20 + self.chat_max_kb_per_s * 1024 * max(0.0, duration))
