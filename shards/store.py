"""The shard store: tar shards plus one record per VOD, the record committed last.

    {root}/shards/{streamer}/{vod_id}-{k:05d}.tar    written to a temporary name, then renamed
    {root}/vods/{streamer}/{vod_id}.json             the VOD record, written last, atomically

A VOD is in the store exactly when its record exists: readers, `ls` and the trainer trust
records only, so a crash at any point leaves at worst orphan shards that `gc` removes.
The root is a local directory or any fsspec URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tarfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

import fsspec
import webdataset as wds

from vod2chat.config import param
from vod2chat.shards.schema import (STORE_INFO, Sample, SchemaError, ShardInfo, StoreInfo, VodRecord, check_name,
                                    decode_sample, encode_sample)

TMP_PREFIX = ".tmp-"


@dataclass
class StoreToolConfig:
    """`vod2chat store ACTION STORE`: inspect or clean a shard store."""
    action: str = param("ls", "ls: totals per streamer; verify: checksums, counts, orphans; gc: remove orphans",
                        positional=True, choices=["ls", "verify", "gc"])
    store: str = param("", "store directory or fsspec URL", positional=True, required=True)
    min_age: float = param(3600.0, "gc: keep orphans younger than this many seconds (an ingest may be writing them)", ge=0)
    dry_run: bool = param(False, "gc: only list what would be removed")


class StoreError(RuntimeError):
    """The store is inconsistent with what was asked (mixed fingerprints, bad record...)."""


@dataclass
class VerifyReport:
    vods: int = 0
    shards: int = 0
    problems: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    bad_records: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _HashingWriter:
    """File wrapper that checksums bytes as they are written, so a shard is hashed once."""

    def __init__(self, f: Any):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.n += len(b)
        return self.f.write(b)

    def tell(self) -> int:
        return self.n

    def flush(self) -> None:
        self.f.flush()


class Store:
    def __init__(self, url: str):
        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/")
        # Local files can be renamed atomically; an object store's PUT is already atomic.
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    @property
    def canonical_url(self) -> str:
        """The store as an absolute path or a full URL: what a run saves, so that eval and generate
        find it from any working directory."""
        if self.local:
            return os.path.abspath(os.path.expanduser(self.root))
        return self.fs.unstrip_protocol(self.root)

    def require(self) -> "Store":
        """This store, or a StoreError if nothing is there (a typo must not read as an empty store)."""
        self.fs.invalidate_cache()
        if not self.fs.exists(self.root):
            raise StoreError(f"{self.url}: no such store (nothing at {self.canonical_url}); check the path, "
                             "or create it with `vod2chat ingest --store ...`")
        if not (self.fs.exists(self.abspath("vods")) or self.fs.exists(self.abspath("shards"))):
            raise StoreError(f"{self.url}: not a vod2chat store (no vods/ or shards/ in {self.canonical_url})")
        return self

    # -- paths ---------------------------------------------------------------------------
    def abspath(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def full_url(self, rel: str) -> str:
        """A path other processes (trainer workers) can open with fsspec."""
        p = self.abspath(rel)
        return p if self.local else self.fs.unstrip_protocol(p)

    @staticmethod
    def record_rel(streamer: str, vod_id: str) -> str:
        return f"vods/{check_name('streamer', streamer)}/{check_name('vod_id', vod_id)}.json"

    @staticmethod
    def shard_rel(streamer: str, vod_id: str, k: int) -> str:
        return f"shards/{check_name('streamer', streamer)}/{check_name('vod_id', vod_id)}-{k:05d}.tar"

    # -- atomic writes -------------------------------------------------------------------
    def _tmp_rel(self, rel: str) -> str:
        d, name = posixpath.split(rel)
        return posixpath.join(d, f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}")

    def _publish(self, tmp_rel: str, rel: str) -> None:
        if self.local:
            self.fs.mv(self.abspath(tmp_rel), self.abspath(rel))

    def _open_for_commit(self, rel: str) -> tuple[str, Any]:
        target = self._tmp_rel(rel) if self.local else rel
        self.fs.makedirs(posixpath.dirname(self.abspath(target)), exist_ok=True)
        return target, self.fs.open(self.abspath(target), "wb")

    def write_shard(self, rel: str, samples: list[Sample]) -> ShardInfo:
        """Write one tar shard under a temporary name, then rename it into place."""
        target, f = self._open_for_commit(rel)
        try:
            with f:
                hw = _HashingWriter(f)
                with wds.TarWriter(hw, encoder=False, mtime=0) as tw:
                    for s in samples:
                        tw.write(encode_sample(s))
        except BaseException:
            self.fs.rm(self.abspath(target)) if self.fs.exists(self.abspath(target)) else None
            raise
        self._publish(target, rel)
        messages = sum(len(s.chat["messages"]) for s in samples)
        return ShardInfo(rel, len(samples), hw.n, hw.sha.hexdigest(), messages)

    def commit_record(self, record: VodRecord) -> None:
        """The VOD record is the commit point: written last and atomically."""
        rel = self.record_rel(record.streamer, record.vod_id)
        target, f = self._open_for_commit(rel)
        with f:
            f.write(json.dumps(record.to_json(), indent=1, ensure_ascii=False).encode("utf-8"))
        self._publish(target, rel)

    def commit_vod(self, record: VodRecord) -> None:
        """Commit a VOD's record, then remove the shards of the record it replaces (never before:
        a crash in between leaves orphans for `gc`, never a VOD without its data)."""
        old = self.read_record(record.streamer, record.vod_id)
        self.commit_record(record)
        if old is not None:
            keep = {sh.path for sh in record.shards}
            for sh in old.shards:
                if sh.path not in keep and self.fs.exists(self.abspath(sh.path)):
                    self.fs.rm(self.abspath(sh.path))

    @staticmethod
    def next_shard_index(record: VodRecord | None) -> int:
        """The first shard number past every shard of `record` (0 without one): a replacement
        writes new names, so the old shards stay readable until the new record commits."""
        if record is None:
            return 0
        numbers = (re.search(r"-(\d+)\.tar$", sh.path) for sh in record.shards)
        return 1 + max((int(m.group(1)) for m in numbers if m), default=-1)

    # -- records -------------------------------------------------------------------------
    def _load_record(self, path: str) -> VodRecord:
        """One record, checked: its name and shard paths come from a file anyone with write
        access to the bucket may have edited, and callers open and delete what it names."""
        streamer = posixpath.basename(posixpath.dirname(path))
        vod_id = posixpath.basename(path)[: -len(".json")]
        with self.fs.open(path, "rb") as f:
            try:
                rec = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise StoreError(f"{path}: VOD record is not valid JSON ({e}); remove it and re-ingest") from e
        try:
            return VodRecord.from_json(rec, path, streamer, vod_id)
        except SchemaError as e:
            raise StoreError(str(e)) from None

    def read_record(self, streamer: str, vod_id: str) -> VodRecord | None:
        path = self.abspath(self.record_rel(streamer, vod_id))
        if not self.fs.exists(path):
            return None
        return self._load_record(path)

    def records(self, streamers: list[str] | None = None,
                errors: list[str] | None = None) -> Iterator[VodRecord]:
        """Committed VOD records, in a stable order (streamer, vod_id). A bad record (not JSON,
        a shard path outside its place) raises StoreError naming it, or, when `errors` is a list,
        is skipped with its message appended there (verify reports every one)."""
        self.fs.invalidate_cache()  # object-store listings are cached: new commits must show
        for path in sorted(self.fs.glob(self.abspath("vods/*/*.json"))):
            name = posixpath.basename(path)
            if name.startswith(TMP_PREFIX):
                continue
            if streamers and posixpath.basename(posixpath.dirname(path)) not in streamers:
                continue
            try:
                rec = self._load_record(path)
            except StoreError as e:
                if errors is None:
                    raise
                errors.append(str(e))
                continue
            yield rec

    def fingerprints(self) -> dict[str, Any] | None:
        """The store's feature fingerprints (all records share them), or None if empty."""
        for rec in self.records():
            return {"video": rec.fingerprints["video"], "audio": rec.fingerprints["audio"]}
        return None

    def check_fingerprints(self, fps: dict[str, Any]) -> None:
        """Refuse to mix feature spaces in one store."""
        have = self.fingerprints()
        if have is None:
            return
        have, fps = {k: have[k] for k in ("video", "audio")}, {k: fps[k] for k in ("video", "audio")}
        if have != fps:
            diff, fixes = fingerprint_diff(have, fps, "in the store", "in this ingest")
            raise StoreError(f"store {self.url} holds features made with other encoder settings ({diff}): features "
                             f"from different settings live in different spaces; {', or '.join(fixes)}, "
                             "or ingest into a new store")

    # -- the store's own settings (store.json) --------------------------------------------
    def read_info(self) -> StoreInfo | None:
        """store.json, checked (None in a store made before it, or not begun)."""
        path = self.abspath(STORE_INFO)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            try:
                obj = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise StoreError(f"{path}: not valid JSON ({e}); fix it or remove it (the records say the "
                                 "store's precision)") from e
        try:
            return StoreInfo.from_json(obj, path)
        except SchemaError as e:
            raise StoreError(str(e)) from None

    def precision(self) -> str | None:
        """The encoders' precision every VOD of this store is computed in: store.json's, else (a
        store made before it) what its records' fingerprints say, else None (nothing pinned yet)."""
        info = self.read_info()
        if info is not None:
            return info.precision
        fps = self.fingerprints()
        if fps is None:
            return None
        tag = str(fps["video"].get("precision") or "fp32")
        return tag.split()[0]

    def pin_precision(self, precision: str, cpu: str | None = None) -> str:
        """Record `precision` as this store's unless it has one already (an older store gets what
        its records say written down); returns the store's precision."""
        have = self.precision()
        if have is not None and self.read_info() is not None:
            return have
        info = StoreInfo(precision=have or precision, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         cpu=cpu)
        target, f = self._open_for_commit(STORE_INFO)
        with f:
            f.write(json.dumps(info.to_json(), indent=1, ensure_ascii=False).encode("utf-8"))
        self._publish(target, STORE_INFO)
        return info.precision

    # -- ls / verify / gc ----------------------------------------------------------------
    def summary(self) -> dict[str, dict[str, float]]:
        per: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for rec in self.records():
            s = per[rec.streamer]
            s["vods"] += 1
            s["hours"] += rec.duration / 3600
            s["messages"] += rec.messages
            c = chat_counts(rec)
            s["dropped"] += c["dropped"]
            s["malformed"] += c["malformed"]
            s["low_chat"] += chat_warning("", **c, duration=rec.duration) is not None
            s["segments"] += rec.segments
            s["shards"] += len(rec.shards)
            s["bytes"] += sum(sh.bytes for sh in rec.shards)
        return {k: dict(v) for k, v in sorted(per.items())}

    def shard_files(self) -> list[str]:
        """Every file under shards/, relative to the root (committed, orphaned or temporary)."""
        base = self.abspath("shards")
        if not self.fs.exists(base):
            return []
        return sorted(posixpath.relpath(p, self.root) for p in self.fs.find(base))

    def verify(self, checksums: bool = True) -> VerifyReport:
        rep = VerifyReport()
        referenced: set[str] = set()
        for rec in self.records(errors=rep.bad_records):
            rep.vods += 1
            for sh in rec.shards:
                rep.shards += 1
                referenced.add(sh.path)
                rep.problems.extend(self._verify_shard(sh, checksums))
        rep.problems.extend(rep.bad_records)
        rep.orphans = [p for p in self.shard_files() if p not in referenced]
        return rep

    def _verify_shard(self, sh: ShardInfo, checksums: bool) -> list[str]:
        path = self.abspath(sh.path)
        if not self.fs.exists(path):
            return [f"{sh.path}: missing (listed in a VOD record)"]
        size = self.fs.size(path)
        if size != sh.bytes:
            return [f"{sh.path}: {size} bytes, record says {sh.bytes}"]
        if not checksums:
            return []
        with self.fs.open(path, "rb") as f:
            _, sha = sha256_of(f)
        if sha != sh.sha256:
            return [f"{sh.path}: sha256 mismatch (shard changed or corrupt)"]
        return self._verify_samples(sh, path)

    def _verify_samples(self, sh: ShardInfo, path: str) -> list[str]:
        """Every sample of a shard decoded as the trainer decodes it (members, schema, feature dtype,
        shape and finiteness); a tar that cannot be read is named, and the next shard is checked."""
        raw: dict[str, dict[str, Any]] = {}
        try:
            with self.fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tf:
                for m in tf:  # read into memory only: members are never extracted to disk
                    key, _, ext = m.name.partition(".")
                    member = tf.extractfile(m) if m.isfile() else None
                    if member is not None:
                        raw.setdefault(key, {"__key__": key, "__url__": sh.path})[ext] = member.read()
        except (tarfile.TarError, EOFError, OSError) as e:
            return [f"{sh.path}: not a readable tar ({type(e).__name__}: {e}); re-ingest its VOD"]
        if len(raw) != sh.samples:
            return [f"{sh.path}: {len(raw)} samples, record says {sh.samples}"]
        bad = []
        for sample in raw.values():
            try:
                decode_sample(sample)
            except SchemaError as e:
                bad.append(str(e))
        more = [f"{sh.path}: {len(bad) - 3} more bad samples"] if len(bad) > 3 else []
        return bad[:3] + more

    def gc(self, min_age_s: float = 3600.0, dry_run: bool = False) -> list[str]:
        """Remove orphan shards. Young orphans may belong to an ingest still running: keep them."""
        now = time.time()
        removed = []
        rep = self.verify(checksums=False)
        if rep.bad_records:
            # The shards of an unreadable record would look like orphans: deleting them could
            # lose committed data. A person decides first.
            raise StoreError(f"not collecting garbage in {self.url}: {len(rep.bad_records)} bad VOD record(s), "
                             f"first: {rep.bad_records[0]}")
        for rel in rep.orphans:
            path = self.abspath(rel)
            try:
                mtime = self.fs.modified(path).timestamp()
            except (NotImplementedError, FileNotFoundError):
                mtime = 0.0
            if now - mtime < min_age_s:
                continue
            if not dry_run:
                self.fs.rm(path)
            removed.append(rel)
        return removed


def sha256_of(f: IO[bytes], block: int = 1 << 22) -> tuple[int, str]:
    """(bytes read, sha256 hex digest) of an open binary file, read in blocks: the one file hash
    of shards and checkpoints."""
    sha, n = hashlib.sha256(), 0
    for data in iter(lambda: f.read(block), b""):
        sha.update(data)
        n += len(data)
    return n, sha.hexdigest()


# What to do about each fingerprint field that can differ ({v}: the store's value); other fields
# are other encoder settings.
_FIX = {"precision": "leave --precision auto (an ingest takes the store's) or pass --precision {v}",
        "fps": "pass --fps {v}", "weights": "use the store's weights (--video-weights/--audio-weights)",
        "random_init_sha256": "use the store's weights", "pca": "use the store's --audio-pca"}


def fingerprint_diff(have: dict[str, Any], want: dict[str, Any], there: str, here: str) -> tuple[str, list[str]]:
    """Two {"video": {...}, "audio": {...}} fingerprints compared field by field, for a one-line
    error: "video precision 'fp32' in the store, 'bf16 autocast' in this ingest; ..." and the
    fixes for those fields."""
    parts, fixes = [], []
    for kind in sorted(set(have) | set(want), key=lambda k: (k != "video", k != "audio", k)):
        a, b = have.get(kind), want.get(kind)
        if a == b:
            continue
        if not (isinstance(a, dict) and isinstance(b, dict)):
            parts.append(f"{kind} {json.dumps(a, sort_keys=True):.200} {there}, {json.dumps(b, sort_keys=True):.200} {here}")
            continue
        for k in sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)):
            parts.append(f"{kind} {k} {a.get(k)!r} {there}, {b.get(k)!r} {here}")
            fixes.append(_FIX.get(k, "use the store's encoder settings").format(v=str(a.get(k)).split(" ")[0]))
    return "; ".join(parts), list(dict.fromkeys(fixes))


def chat_counts(rec: VodRecord) -> dict[str, int]:
    """A record's chat: messages kept, dropped (outside the video), malformed lines skipped."""
    return {"kept": rec.messages, "dropped": rec.messages_dropped or 0, "malformed": rec.chat_skipped or 0}


def chat_warning(vod: str, kept: int, dropped: int, malformed: int, duration: float) -> str | None:
    """Why a VOD's chat looks wrong (less than half of the log kept), or None. A chat log for
    another video, or offsets against another start, keeps nothing and would train on silence."""
    total = kept + dropped + malformed
    if total and kept * 2 >= total:
        return None
    return (f"{vod} keeps {kept} of {total} chat messages ({dropped} outside the video's {duration:.0f} s, "
            f"{malformed} malformed): is it the chat log of this video, with the right start "
            "(--stream-start for raw IRC)?")


# -- JSON files beside the records (eval candidate sets, configs) ---------------------------
def read_json(url: str) -> dict[str, Any] | None:
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        try:
            obj = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # JSON only: nothing read is executed
            raise ValueError(f"{url}: not a JSON file ({e}); remove it to rebuild") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{url}: expected a JSON object, got {type(obj).__name__}; remove it to rebuild")
    return obj


def write_json_atomic(url: str, obj: Any) -> None:
    """Readers never see half a file: a local file is renamed into place; an object store's
    PUT is already atomic."""
    fs, path = fsspec.core.url_to_fs(url)
    data = json.dumps(obj, ensure_ascii=False, indent=0).encode("utf-8")
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    if not local:
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    tmp = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex[:8]}-{posixpath.basename(path)}")
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)
