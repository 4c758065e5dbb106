"""The data contract between ingest, the store and the trainer, in one place.

One WebDataset sample per segment of a VOD (see docs/design.md):

    __key__    {streamer}__{vod_id}__{segment:06d}
    video.npy  float16 [T_v, 2048]  row i at meta["video_t0"] + i / meta["fps"]
    audio.npy  float16 [T_a, 128]   row j covers [audio_t0 + j*hop, audio_t0 + j*hop + win)
    chat.json  {"context": [msg, ...], "messages": [msg, ...]}, msg = {"t", "user", "text"}
    meta.json  streamer, vod_id, segment, start, end, lookback, video_t0, fps,
               audio_t0, audio_hop, audio_win, fingerprints, schema

Features before ``start`` (the look-back) let early messages see a full window; their
times are explicit through ``video_t0``/``audio_t0``, so no reader has to guess.
Nothing outside this module knows member names or how arrays are serialised.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
VIDEO_DIM = 2048
AUDIO_DIM = 128
FEATURE_DTYPE = np.float16
MEMBERS = ("video.npy", "audio.npy", "chat.json", "meta.json")

# Dots split WebDataset keys into extensions; "__" separates key fields; "/" makes paths.
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


class SchemaError(ValueError):
    """A sample or name that breaks the data contract."""


def check_name(kind: str, value: str) -> str:
    """Streamer names and VOD ids become key fields and path parts: keep them plain."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or "__" in value:
        raise SchemaError(
            f"{kind} {value!r} is not usable in the store: use letters, digits, '-' and single '_' "
            "(no dots, slashes, spaces or '__')"
        )
    return value


def check_shard_path(path: Any, streamer: str, where: str, vod_id: str | None = None) -> str:
    """A shard path read from a record must stay inside the store, under the record's own
    streamer (and, given `vod_id`, be one of that VOD's shards, `{vod_id}-{k}.tar`): records live
    on shared buckets that anyone with write access may edit, and `verify`, `gc`,
    `ingest --replace` (which deletes the replaced record's shards) and the trainer open or
    delete what they name."""
    fix = "fix or remove the record (then `vod2chat store verify`)"
    if not isinstance(path, str):
        raise SchemaError(f"{where}: shard path {path!r} is not a string; {fix}")
    prefix = f"shards/{streamer}/"
    name = path[len(prefix):] if path.startswith(prefix) else ""
    # normpath catches `a/../b` and `./`; the name check catches absolute paths, `..`,
    # backslashes, drive letters and URLs, which all contain characters a shard name cannot.
    if (posixpath.normpath(path) != path or not name.endswith(".tar")
            or not _NAME_RE.fullmatch(name[: -len(".tar")])):
        raise SchemaError(
            f"{where}: shard path {path!r} is not a plain '{prefix}<name>.tar' inside the store "
            f"(relative, normalised, under shards/{{streamer}}/); {fix}"
        )
    if vod_id is not None and not re.fullmatch(rf"{re.escape(vod_id)}-\d+\.tar", name):
        raise SchemaError(f"{where}: shard path {path!r} is not a shard of VOD {vod_id} "
                          f"('{prefix}{vod_id}-<number>.tar'); {fix}")
    return path


_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "dict": (dict,),
                                       "list": (list,)}


def _typed(obj: dict[str, Any], name: str, kind: str, where: str, required: bool) -> Any:
    """obj[name] if it has the contract's type (bools are not numbers), None if absent and optional."""
    if obj.get(name) is None:
        if required:
            raise SchemaError(f"{where}: VOD record lacks {name!r}; fix or remove the record (then re-ingest)")
        return None
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, _TYPES[kind]):
        raise SchemaError(f"{where}: VOD record field {name!r} must be {kind}, got {type(v).__name__} {v!r:.60}; "
                          "fix or remove the record (then re-ingest)")
    return float(v) if kind == "float" else v


@dataclass
class ShardInfo:
    """One shard as its VOD record lists it. sha256/messages may be absent in records written by
    hand or by old versions (None: unknown); unknown keys are kept and written back."""

    path: str  # relative to the store root: shards/{streamer}/{vod_id}-{k:05d}.tar
    samples: int
    bytes: int
    sha256: str | None = None
    messages: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _FIELDS = (("samples", "int", True), ("bytes", "int", True), ("sha256", "str", False), ("messages", "int", False))

    @classmethod
    def from_json(cls, sh: Any, where: str, streamer: str, vod_id: str | None = None) -> "ShardInfo":
        if not isinstance(sh, dict):
            raise SchemaError(f"{where}: 'shards' must be a list of objects; fix or remove the record")
        path = check_shard_path(sh.get("path"), streamer, where, vod_id)
        vals = {n: _typed(sh, n, k, f"{where} shard {path}", req) for n, k, req in cls._FIELDS}
        known = {"path", *vals}
        return cls(path=path, **vals, extra={k: v for k, v in sh.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        out = {"path": self.path, "samples": self.samples, "bytes": self.bytes, "sha256": self.sha256,
               "messages": self.messages}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}


# The record's typed fields in on-disk order (name, type, required); the ingest settings (and any
# field this version does not know) sit between `fingerprints` and `settings_id`, as ingest writes.
_HEAD = (("schema", "int", False), ("streamer", "str", True), ("vod_id", "str", True), ("duration", "float", True),
         ("segments", "int", True), ("messages", "int", True), ("messages_dropped", "int", False),
         ("chat_format", "str", False), ("chat_skipped", "int", False), ("chat_skipped_lines", "list", False),
         ("fingerprints", "dict", True))
_TAIL = (("settings_id", "str", False), ("audio_hop", "float", False), ("audio_win", "float", False))
_END = (("created", "str", False), ("ingest_wall_s", "float", False))
# Ingest settings the trainer reads back (DataConfig checks against them): typed when present.
_SETTINGS = (("segment_s", "float"), ("lookback_s", "float"), ("fps", "float"), ("context_messages", "int"),
             ("segments_per_shard", "int"), ("sources", "dict"))


@dataclass
class VodRecord:
    """vods/{streamer}/{vod_id}.json: the commit point of one VOD. The only way code builds a
    record (`VodRecord(...)`, `.to_json()`) or reads one (`VodRecord.from_json(obj, where)`, which
    checks types, required fields and that every shard path is one of this VOD's shards inside
    the store: records live on shared buckets anyone with write access may edit)."""

    streamer: str
    vod_id: str
    duration: float  # seconds of video
    segments: int
    messages: int  # kept (inside the video)
    fingerprints: dict[str, Any]  # encoder -> full fingerprint (docs/design.md: a store never mixes them)
    shards: list[ShardInfo]
    schema: int | None = None
    messages_dropped: int | None = None  # outside the video
    chat_format: str | None = None
    chat_skipped: int | None = None  # malformed lines
    chat_skipped_lines: list[str] | None = None
    settings_id: str | None = None
    audio_hop: float | None = None
    audio_win: float | None = None
    created: str | None = None
    ingest_wall_s: float | None = None
    # The ingest settings (segment_s, lookback_s, fps, context_messages, sources, ...) and any
    # field this version does not know, kept as read so that a rewrite loses nothing.
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.streamer}/{self.vod_id}"

    def setting(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    @classmethod
    def from_json(cls, rec: Any, where: str, streamer: str | None = None,
                  vod_id: str | None = None) -> "VodRecord":
        """A record as read from the store, checked before anything acts on it; `streamer`/`vod_id`:
        what its location (vods/{streamer}/{vod_id}.json) says it is. Errors name `where`."""
        if not isinstance(rec, dict):
            raise SchemaError(f"{where}: a VOD record must be a JSON object; fix or remove the record")
        try:
            s, v = check_name("streamer", rec.get("streamer")), check_name("vod_id", rec.get("vod_id"))
        except (SchemaError, TypeError) as e:
            raise SchemaError(f"{where}: {e}; fix or remove the record") from None
        if (streamer, vod_id) != (None, None) and (s, v) != (streamer, vod_id):
            raise SchemaError(f"{where}: record says {s}/{v} but is stored as {streamer}/{vod_id}; "
                              "fix or remove the record")
        shards = rec.get("shards")
        if not isinstance(shards, list):
            raise SchemaError(f"{where}: 'shards' must be a list of objects; fix or remove the record")
        infos = [ShardInfo.from_json(sh, where, s, v) for sh in shards]
        typed = _HEAD + _TAIL + _END
        vals = {n: _typed(rec, n, k, where, req) for n, k, req in typed}
        settings = {k: val for k, val in rec.items() if k not in {n for n, _, _ in typed} | {"shards"}}
        for n, k in _SETTINGS:
            _typed(settings, n, k, where, False)
        return cls(**vals, shards=infos, settings=settings)

    def to_json(self) -> dict[str, Any]:
        """The on-disk JSON object (docs/design.md's record): absent optional fields stay absent."""
        def part(fields: tuple[tuple[str, str, bool], ...]) -> dict[str, Any]:
            return {n: getattr(self, n) for n, _, _ in fields if getattr(self, n) is not None}
        return {**part(_HEAD), **self.settings, **part(_TAIL), "shards": [sh.to_json() for sh in self.shards],
                **part(_END)}


STORE_INFO = "store.json"
STORE_PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class StoreInfo:
    """{store}/store.json: what every VOD of a store shares, chosen once by its first ingest: the
    encoders' compute precision (fp32 | bf16 | fp16), so that a store begun on one kind of CPU and
    extended from another stays one feature space. Stores made before it have no such file (their
    records' fingerprints say the same). Unknown keys are kept and written back."""

    precision: str
    created: str | None = None
    cpu: str | None = None  # the machine that chose it (information only)
    extra: dict[str, Any] = field(default_factory=dict)

    _FIELDS = (("precision", "str", True), ("created", "str", False), ("cpu", "str", False))

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "StoreInfo":
        fix = "fix it (precision: one of " + ", ".join(STORE_PRECISIONS) + ") or remove it"
        if not isinstance(obj, dict):
            raise SchemaError(f"{where}: must be a JSON object; {fix}")
        vals = {}
        for n, k, req in cls._FIELDS:
            v = obj.get(n)
            if v is None and not req:
                continue
            if not isinstance(v, str):
                raise SchemaError(f"{where}: field {n!r} must be a string, got {v!r:.60}; {fix}")
            vals[n] = v
        if vals["precision"] not in STORE_PRECISIONS:
            raise SchemaError(f"{where}: precision {vals['precision']!r:.60} is not one of "
                              f"{', '.join(STORE_PRECISIONS)}; {fix}")
        return cls(**vals, extra={k: v for k, v in obj.items() if k not in {n for n, _, _ in cls._FIELDS}})

    def to_json(self) -> dict[str, Any]:
        out = {"precision": self.precision, "created": self.created, "cpu": self.cpu}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}


def sample_key(streamer: str, vod_id: str, segment: int) -> str:
    return f"{check_name('streamer', streamer)}__{check_name('vod_id', vod_id)}__{segment:06d}"


def parse_key(key: str) -> tuple[str, str, int]:
    """(streamer, vod_id, segment) of a sample key, or of an example key `{sample key}/{message}`."""
    streamer, vod_id, segment = key.split("/", 1)[0].split("__")
    return streamer, vod_id, int(segment)


@dataclass(frozen=True)
class SegmentMeta:
    """meta.json of one segment: where it sits in its VOD and where its feature rows sit in time.
    The only way code builds a segment's meta (`SegmentMeta(...).as_dict()`) or reads one
    (`sample.segment_meta()`); the dict form is what the shard stores."""

    streamer: str
    vod_id: str
    segment: int
    start: float  # seconds from VOD start
    end: float
    video_t0: float  # time of video row 0 (start - look-back, on the fps grid)
    fps: float
    audio_t0: float  # start of audio row 0's window
    audio_hop: float
    audio_win: float
    lookback: float = 0.0  # seconds of features carried before start
    fingerprints: dict[str, str] = field(default_factory=dict)  # encoder -> fingerprint id

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, meta: dict[str, Any], where: str = "segment") -> "SegmentMeta":
        names = [f.name for f in dataclasses.fields(cls)]
        optional = [f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING]
        missing = [n for n in names if n not in meta and n not in optional]
        if missing:
            raise SchemaError(f"{where}: meta.json lacks {missing}")
        return cls(**{n: meta[n] for n in names if n in meta})


@dataclass
class ChatBlock:
    """chat.json of one segment: its messages, and the last few before it as context (kept apart,
    so context is never mistaken for a target). msg = {"t": seconds from VOD start, "user", "text"}."""

    context: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {"context": self.context, "messages": self.messages}

    @classmethod
    def from_dict(cls, chat: dict[str, Any], where: str = "segment") -> "ChatBlock":
        if not isinstance(chat, dict) or not isinstance(chat.get("messages"), list):
            raise SchemaError(f"{where}: chat.json must be {{'context': [...], 'messages': [...]}}")
        return cls(list(chat.get("context") or []), chat["messages"])


@dataclass
class Sample:
    """One segment of one VOD, decoded."""

    key: str
    video: np.ndarray  # float16 [T_v, 2048]
    audio: np.ndarray  # float16 [T_a, 128]
    chat: dict[str, list[dict[str, Any]]]
    meta: dict[str, Any]

    def segment_meta(self) -> SegmentMeta:
        return SegmentMeta.from_dict(self.meta, self.key)

    def chat_block(self) -> ChatBlock:
        return ChatBlock.from_dict(self.chat, self.key)

    def video_times(self) -> np.ndarray:
        """Time (s from VOD start) at which each video row was shown."""
        return self.meta["video_t0"] + np.arange(len(self.video)) / self.meta["fps"]

    def audio_end_times(self) -> np.ndarray:
        """Time at which each audio row's window has been fully heard (its causal time)."""
        m = self.meta
        return m["audio_t0"] + np.arange(len(self.audio)) * m["audio_hop"] + m["audio_win"]


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode_sample(s: Sample) -> dict[str, Any]:
    """Sample -> the dict of members a tar writer stores."""
    if s.video.ndim != 2 or s.video.shape[1] != VIDEO_DIM:
        raise SchemaError(f"{s.key}: video must be [T, {VIDEO_DIM}], got {s.video.shape}")
    if s.audio.ndim != 2 or s.audio.shape[1] != AUDIO_DIM:
        raise SchemaError(f"{s.key}: audio must be [T, {AUDIO_DIM}], got {s.audio.shape}")
    return {
        "__key__": s.key,
        "video.npy": _npy(s.video.astype(FEATURE_DTYPE, copy=False)),
        "audio.npy": _npy(s.audio.astype(FEATURE_DTYPE, copy=False)),
        "chat.json": _json(s.chat),
        "meta.json": _json({**s.meta, "schema": SCHEMA_VERSION}),
    }


_NPY_HEADER = re.compile(rb"\{'descr': '([<|][fiu][1248])', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \} *\n")


def load_npy(b: bytes | bytearray) -> np.ndarray:
    """np.load without its per-array header evaluation (ast.literal_eval: most of the cost of a
    small array) for the plain little-endian headers np.save writes; anything else: np.load,
    never unpickling."""
    if b[:8] == b"\x93NUMPY\x01\x00":
        hl = int.from_bytes(b[8:10], "little")
        m = _NPY_HEADER.fullmatch(bytes(b[10 : 10 + hl]))
        if m:
            shape = tuple(int(x) for x in m.group(2).split(b",") if x.strip())
            dtype = np.dtype(m.group(1).decode())
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if len(b) - 10 - hl == count * dtype.itemsize:
                return np.frombuffer(b, dtype, count, 10 + hl).reshape(shape)
    return np.load(io.BytesIO(b), allow_pickle=False)


def decode_sample(raw: dict[str, Any]) -> Sample:
    """The dict of raw member bytes from a tar -> Sample, checking the contract."""
    key = raw.get("__key__", "?")
    missing = [m for m in MEMBERS if m not in raw]
    if missing:
        raise SchemaError(f"sample {key} in {raw.get('__url__', '?')} lacks {missing}")
    where = f"sample {key} in {raw.get('__url__', '?')}"
    try:
        meta = json.loads(raw["meta.json"])
    except ValueError as e:
        raise SchemaError(f"{where}: meta.json is not JSON ({e})") from None
    version = meta.get("schema") if isinstance(meta, dict) else None
    if version != SCHEMA_VERSION:
        raise SchemaError(
            f"{where} has schema {version}, this code reads {SCHEMA_VERSION}: "
            "re-ingest the VOD or use a matching vod2chat version"
        )
    try:
        # Arrays load without pickle: an object array planted in a shard is an error, never run.
        chat = json.loads(raw["chat.json"])
        sample = Sample(key=key, video=load_npy(raw["video.npy"]), audio=load_npy(raw["audio.npy"]), chat=chat,
                        meta=meta)
    except ValueError as e:  # also JSONDecodeError, UnicodeDecodeError
        raise SchemaError(f"{where}: {type(e).__name__}: {e}") from None
    SegmentMeta.from_dict(meta, where)  # the contract's fields are there
    ChatBlock.from_dict(chat, where)
    check_features(sample, where)
    return sample


def check_features(s: Sample, where: str) -> None:
    """Feature arrays as the contract stores them: float16, [rows, dim], at least one video row,
    every value finite. NaN/Inf rows would poison the feature statistics and every gradient that
    touches them, and another dtype or width means another writer: both are errors, never cast."""
    for name, a, dim in (("video.npy", s.video, VIDEO_DIM), ("audio.npy", s.audio, AUDIO_DIM)):
        if a.dtype != FEATURE_DTYPE:
            raise SchemaError(f"{where}: {name} is {a.dtype}, the contract stores {np.dtype(FEATURE_DTYPE).name}; "
                              "re-ingest the VOD")
        if a.ndim != 2 or a.shape[1] != dim:
            raise SchemaError(f"{where}: {name} has shape {list(a.shape)}, the contract's is [rows, {dim}]; "
                              "re-ingest the VOD")
        if name == "video.npy" and not len(a):
            raise SchemaError(f"{where}: {name} has 0 rows (a segment always shows frames); re-ingest the VOD")
        # float16 NaN/Inf have every exponent bit set; testing the bits is ~6x faster than np.isfinite,
        # which numpy does not vectorise for float16 (this runs on every sample the trainer reads).
        bad = int(np.count_nonzero((a.view(np.uint16) & 0x7C00) == 0x7C00))
        if bad:
            raise SchemaError(f"{where}: {name} holds {bad} NaN/Inf values; re-ingest the VOD (or set "
                              "data.skip_errors=true to skip it)")
