"""Ingest one VOD: decode -> embed -> align -> write shards -> commit its record.

Plain functions of one VOD with no Ray in sight (img2dataset style): tests call them directly
and ingest/driver.py wraps them in actors. A VOD is cut into parts of `segments_per_shard`
segments; each part becomes exactly one shard, so a part can run anywhere, be retried, and
rewrite the same shard name without ever duplicating data. The record is written last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from vod2chat.ingest import align
from vod2chat.ingest.chat import CHAT_SUFFIXES, Message, parse_chat
from vod2chat.ingest.config import IngestConfig
from vod2chat.ingest.encoders import fingerprint_id
from vod2chat.ingest.features import Encoders, _timed, embed_rows  # Encoders: importable from here too
from vod2chat.ingest.errors import NotRetryable
from vod2chat.ingest.precision import cpu_model, store_precision
from vod2chat.ingest.inputs import list_files, localize
from vod2chat.ingest.media import MediaInfo, probe
from vod2chat.shards.schema import (FEATURE_DTYPE, SCHEMA_VERSION, Sample, SchemaError, SegmentMeta, ShardInfo, VodRecord,
                                    check_name, sample_key)
from vod2chat.shards.store import Store, StoreError, chat_warning

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".flv", ".mov", ".ts", ".m4v")


class ChatCoverageError(NotRetryable, ValueError):
    """A VOD whose chat log mostly misses the video, refused under --strict."""


@dataclass
class VodJob:
    streamer: str
    vod_id: str
    video: str
    chat: str
    audio: str | None = None  # a separate audio file, if the VOD's own track is not wanted


@dataclass
class VodPlan:
    """Everything a part needs, computed once per VOD (cheap: probe + chat parse)."""

    job: VodJob
    media: MediaInfo
    messages: list[Message]
    chat_format: str
    chat_skipped: list[str]
    dropped: int  # messages outside [0, duration]
    segments: list[align.Segment]
    parts: list[list[align.Segment]]
    shard_base: int  # first shard number: past any older record's shards, so replacing never overwrites
    settings: dict[str, Any]
    settings_id: str
    times: list[float] = field(default_factory=list)
    chat_truncated: int = 0  # messages cut to max_message_chars


# -- pairing ---------------------------------------------------------------------------
# Only these endings are cut off a file name to get its VOD id: ids may contain other dots
# (which the store then refuses by name), never lose them silently.
CHAT_ENDINGS = tuple(sorted({b + gz for b in CHAT_SUFFIXES if b != ".gz" for gz in ("", ".gz")} | {".gz"},
                            key=len, reverse=True))


def split_name(path: str | Path) -> tuple[str, str] | None:
    """`2424877187.json.gz` -> (`2424877187`, "chat"); `3001.part1.mp4` -> (`3001.part1`, "video");
    None for a file that is neither a video nor a chat log."""
    name = Path(path).name
    low = name.lower()
    for kind, endings in (("video", VIDEO_SUFFIXES), ("chat", CHAT_ENDINGS)):
        for e in endings:
            if low.endswith(e) and len(name) > len(e):
                return name[: -len(e)], kind
    return None


def vod_id_of(path: str | Path) -> str:
    """`2424877187.mkv`, `2424877187.json.gz` -> `2424877187` (only known endings are cut)."""
    found = split_name(path)
    return found[0] if found else Path(path).name


@dataclass
class Pairing:
    """What the inputs pair into: the jobs, what could not be paired (one line naming each file),
    and chat logs without a video (left alone: e.g. a generated `<vod>.chat.json`)."""

    jobs: list[VodJob]
    problems: list[str]
    lone_chats: list[str]


def find_pairs(inputs: list[str], streamer: str) -> Pairing:
    """Pair videos with chat logs by VOD id. Directories (and s3:// or gs:// prefixes) are
    searched recursively. A video pairs with exactly one chat log; every other case is a problem
    naming the files, and the rest still pair."""
    if not streamer:
        raise ValueError("--streamer is required (the channel these VODs belong to)")
    check_name("streamer", streamer)
    videos: dict[str, list[str]] = {}
    chats: dict[str, list[str]] = {}
    problems = []
    for item in inputs:
        files = list_files(item)
        for f in files:
            found = split_name(f)
            if found:
                (videos if found[1] == "video" else chats).setdefault(found[0], []).append(str(f))
            elif files == [item]:  # named on the command line, not found in a folder
                problems.append(f"{item}: neither a video ({', '.join(VIDEO_SUFFIXES)}) nor a chat log "
                                f"({', '.join(CHAT_ENDINGS)})")
    if not videos and not problems:
        raise FileNotFoundError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {', '.join(inputs) or '(no inputs)'}")
    jobs = []
    for vid, paths in sorted(videos.items()):
        try:
            check_name("vod_id", vid)
        except SchemaError as e:
            problems.append(f"{paths[0]}: {e}; rename the file (and its chat log) to '<vod_id>.<ext>'")
            continue
        if len(paths) > 1:
            problems.append(f"two videos map to VOD id {vid!r}: {' and '.join(paths)}; keep one or rename the other")
        elif len(chats.get(vid, [])) > 1:
            problems.append(f"two chat logs for VOD id {vid!r}: {' and '.join(chats[vid])}; keep one")
        elif vid not in chats:
            problems.append(f"no chat log for video {paths[0]}: put '{vid}{{{','.join(CHAT_ENDINGS)}}}' next to it")
        else:
            jobs.append(VodJob(streamer, vid, paths[0], chats[vid][0]))
    lone = sorted(c for vid, cs in chats.items() if vid not in videos for c in cs)
    return Pairing(jobs, problems, lone)


# -- planning --------------------------------------------------------------------------
def quick_hash(path: str) -> str:
    """Identity of a (possibly huge) source file without reading all of it: its size and first and
    last MiB. URLs take two ranged reads, so a rerun can skip a VOD without fetching it."""
    fs, p = fsspec.core.url_to_fs(path)
    size = fs.size(p)
    h = hashlib.sha256(str(size).encode())
    with fs.open(p, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def source_hashes(job: VodJob) -> dict[str, str]:
    return {k: quick_hash(p) for k, p in (("video", job.video), ("chat", job.chat), ("audio", job.audio)) if p}


def local_job(job: VodJob, cfg: IngestConfig) -> VodJob:
    """The job with local paths: object-store inputs are fetched into this node's cache."""
    def loc(p: str | None) -> str | None:
        return localize(p, cfg.input_cache, cfg.input_cache_gb) if p else None

    return VodJob(job.streamer, job.vod_id, loc(job.video), loc(job.chat), loc(job.audio))


def ingest_settings(job: VodJob, cfg: IngestConfig, fingerprints: dict[str, Any], hashes: dict[str, str],
                    streams: tuple[int | None, int | None]) -> dict[str, Any]:
    """What makes a VOD's shards what they are. `streams` are the chosen (probed) stream indices;
    the requested ones are part of the identity too, so the same request on the same bytes
    always chooses the same streams."""
    return {
        "segment_s": cfg.segment_s,
        "lookback_s": cfg.lookback_s,
        "fps": cfg.fps,
        "context_messages": cfg.context_messages,
        "segments_per_shard": cfg.segments_per_shard,
        "fingerprint_ids": {k: fingerprint_id(v) for k, v in fingerprints.items()},
        "streams_requested": [cfg.video_stream, cfg.audio_stream],
        "sources": {
            "video": {"path": job.video, "hash": hashes["video"], "video_stream": streams[0], "audio_stream": streams[1]},
            "chat": {"path": job.chat, "hash": hashes["chat"]},
            **({"audio": {"path": job.audio, "hash": hashes["audio"]}} if job.audio else {}),
        },
    }


def settings_id(settings: dict[str, Any]) -> str:
    # Paths are not identity: the same files moved elsewhere are the same VOD.
    ident = json.loads(json.dumps(settings))
    for src in ident["sources"].values():
        src.pop("path", None)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def plan_vod(job: VodJob, cfg: IngestConfig, fingerprints: dict[str, Any], store: Store) -> VodPlan | None:
    """Probe and parse one VOD. None if the store already holds it with the same settings."""
    hashes = source_hashes(job)
    old = store.read_record(job.streamer, job.vod_id)
    if old is not None:
        # The same request on the same bytes probes to the same streams: a rerun checks its
        # settings against the record's streams and skips without fetching or probing anything.
        was = old.setting("sources", {}).get("video", {})
        same = ingest_settings(job, cfg, fingerprints, hashes, (was.get("video_stream"), was.get("audio_stream")))
        if settings_id(same) == old.settings_id:
            return None
    local = local_job(job, cfg)
    media = probe(local.video, video_stream=cfg.video_stream, audio_stream=cfg.audio_stream)
    settings = ingest_settings(job, cfg, fingerprints, hashes, (media.video_stream, media.audio_stream))
    sid = settings_id(settings)
    shard_base = 0
    if old is not None:
        if not cfg.replace:
            raise StoreError(
                f"{job.streamer}/{job.vod_id} is already in {store.url} with other settings or sources "
                f"(settings {old.settings_id} vs {sid}); pass --replace to re-ingest it"
            )
        shard_base = store.next_shard_index(old)
    chat = parse_chat(local.chat, stream_start=cfg.stream_start, max_chars=cfg.max_message_chars,
                      max_bytes=cfg.chat_max_bytes(media.duration))
    kept = [m for m in chat.messages if 0 <= m.t <= media.duration]
    warning = chat_warning(f"{job.streamer}/{job.vod_id}", len(kept), len(chat.messages) - len(kept),
                           len(chat.skipped), media.duration)
    if chat.truncated:
        log.warning("%s/%s: %d chat message(s) longer than %d characters cut to that (max_message_chars)",
                    job.streamer, job.vod_id, chat.truncated, cfg.max_message_chars)
    if warning and cfg.strict:
        raise ChatCoverageError(f"{warning} Refused (--strict); chat log {job.chat}")
    segments = align.plan_segments(media.duration, cfg.segment_s, cfg.lookback_s, cfg.fps)
    return VodPlan(
        job=job, media=media, messages=kept, chat_format=chat.format,
        chat_skipped=[f"{s.path}:{s.line}: {s.reason}" for s in chat.skipped],
        dropped=len(chat.messages) - len(kept), segments=segments,
        parts=align.plan_parts(segments, cfg.segments_per_shard), shard_base=shard_base,
        settings=settings, settings_id=sid, times=[m.t for m in kept], chat_truncated=chat.truncated,
    )


# -- the work --------------------------------------------------------------------------
def check_part_fingerprints(plan: VodPlan, enc: Encoders) -> None:
    """A worker whose encoders differ from the plan's (other weights, another precision on
    another node's hardware) must not write into the VOD: its features live in another space."""
    have = {k: fingerprint_id(v) for k, v in enc.fingerprints().items()}
    want = plan.settings["fingerprint_ids"]
    if have != want:
        raise StoreError(
            f"{plan.job.streamer}/{plan.job.vod_id}: this worker's encoders ({enc.video.device}, precision "
            f"{enc.video.precision}) have fingerprints {have}, the ingest was planned with {want}; give every "
            "node the same weights and an explicit precision (--set precision=fp32 or bf16)")


class NonFiniteFeatures(NotRetryable, ValueError):
    """An encoder produced NaN/Inf (damaged weights, a numeric overflow): the part is never written."""


def check_finite_features(plan: VodPlan, part: int, v0: int, a0: int, video: np.ndarray, audio: np.ndarray) -> None:
    """Features are checked as they will be stored (float16: a value beyond 65504 becomes Inf), so
    a NaN/Inf row never reaches a shard, where it would turn every training step touching it to NaN."""
    for name, rows, first in (("video", video, v0), ("audio", audio, a0)):
        ok = np.isfinite(rows.astype(FEATURE_DTYPE, copy=False)).all(axis=tuple(range(1, rows.ndim)))
        if not ok.all():
            bad = np.flatnonzero(~ok)
            raise NonFiniteFeatures(
                f"{plan.job.streamer}/{plan.job.vod_id} part {part}: the {name} encoder gave NaN/Inf (or a value "
                f"beyond float16) in {len(bad)} of {len(rows)} rows (first: row {first + int(bad[0])}); nothing of "
                "this VOD is committed. Check the encoder weights and precision, then ingest it again")


def part_samples(plan: VodPlan, part: int, enc: Encoders, cfg: IngestConfig) -> list[Sample]:
    check_part_fingerprints(plan, enc)
    segs = plan.parts[part]
    v0, a0 = segs[0].v0, segs[0].a0
    local = local_job(plan.job, cfg)  # the plan may have been made on another node
    media = dataclasses.replace(plan.media, path=local.video)
    video, audio = embed_rows(media, range(v0, segs[-1].v1), range(a0, segs[-1].a1), enc, cfg.decode, local.audio)
    check_finite_features(plan, part, v0, a0, video, audio)
    fps = enc.fingerprints()
    last = len(plan.segments) - 1
    samples = []
    for seg in segs:
        meta = SegmentMeta(
            streamer=plan.job.streamer, vod_id=plan.job.vod_id, segment=seg.index,
            start=seg.start, end=seg.end, lookback=cfg.lookback_s, video_t0=seg.v0 / cfg.fps, fps=cfg.fps,
            audio_t0=seg.a0 * align.AUDIO_HOP, audio_hop=align.AUDIO_HOP, audio_win=align.AUDIO_HOP,
            fingerprints={k: fingerprint_id(v) for k, v in fps.items()},
        ).as_dict()
        chat = align.chat_for_segment(plan.times, plan.messages, seg, seg.index == last, cfg.context_messages)
        samples.append(Sample(
            key=sample_key(plan.job.streamer, plan.job.vod_id, seg.index),
            video=video[seg.v0 - v0 : seg.v1 - v0], audio=audio[seg.a0 - a0 : seg.a1 - a0],
            chat=chat, meta=meta,
        ))
    return samples


def ingest_part(plan: VodPlan, part: int, store: Store, enc: Encoders, cfg: IngestConfig) -> ShardInfo:
    """Embed one part and write it as one shard. Idempotent: a retry rewrites the same name."""
    rel = store.shard_rel(plan.job.streamer, plan.job.vod_id, plan.shard_base + part)
    samples = part_samples(plan, part, enc, cfg)
    return _timed(enc.stages, "write", store.write_shard, rel, samples)


def commit_vod(plan: VodPlan, shards: list[ShardInfo], store: Store, fingerprints: dict[str, Any],
               wall_s: float) -> VodRecord:
    """Write the VOD record (the commit point), then drop shards of a replaced record."""
    if len(shards) != len(plan.parts):
        raise StoreError(f"{plan.job.vod_id}: {len(shards)} shards for {len(plan.parts)} parts; not committing")
    record = VodRecord(
        schema=SCHEMA_VERSION, streamer=plan.job.streamer, vod_id=plan.job.vod_id,
        duration=plan.media.duration, segments=len(plan.segments),
        messages=sum(s.messages for s in shards), messages_dropped=plan.dropped,
        chat_format=plan.chat_format, chat_skipped=len(plan.chat_skipped),
        chat_skipped_lines=plan.chat_skipped[:50],
        fingerprints=fingerprints, settings=plan.settings, settings_id=plan.settings_id,
        audio_hop=align.AUDIO_HOP, audio_win=align.AUDIO_HOP, shards=list(shards),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), ingest_wall_s=round(wall_s, 3),
    )
    store.commit_vod(record)
    return record


@dataclass
class VodOutcome:
    job: VodJob
    status: str  # done | skipped | failed
    record: VodRecord | None = None
    error: str = ""


def ingest_vod(job: VodJob, store: Store, enc: Encoders, cfg: IngestConfig) -> VodOutcome:
    """The whole VOD in this process: what the Ray driver does, minus the fan-out."""
    t0 = time.perf_counter()
    fps = enc.fingerprints()
    store.check_fingerprints(fps)
    store_precision(enc.video.precision, store.pin_precision(enc.video.precision, cpu_model()), store.url)
    plan = plan_vod(job, cfg, fps, store)
    if plan is None:
        return VodOutcome(job, "skipped", store.read_record(job.streamer, job.vod_id))
    shards = [ingest_part(plan, i, store, enc, cfg) for i in range(len(plan.parts))]
    return VodOutcome(job, "done", commit_vod(plan, shards, store, fps, time.perf_counter() - t0))
