"""Streaming reads of the shard store: a chain of small generator stages (webdataset style).

    records --select--> shard urls --split by node--> --split by worker--> --shuffle/resample-->
    open --tar expand--> group by key --> decode (Sample) --> shuffle buffer

The split is explicit and happens exactly once, here: the trainer must not hand the loader to
anything that splits or dispatches batches again. Errors raise unless skipping is asked for.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import fsspec
import torch
from webdataset.tariterators import group_by_keys, tar_file_expander

from vod2chat.shards.schema import Sample, VodRecord, decode_sample
from vod2chat.shards.store import Store

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's key/extension split


@dataclass
class Selection:
    """Which VODs of a store to read. Held-out splits are by VOD, never by message."""

    streamers: list[str] = field(default_factory=list)  # empty: all
    vods: list[str] = field(default_factory=list)  # "vod_id" or "streamer/vod_id"; empty: all
    split: str = ""  # "", "train", "val" or "test"
    # Held-out VODs named explicitly ("vod_id" or "streamer/vod_id"); when any are named, the
    # hash split below is off and every other VOD is train.
    val_vods: list[str] = field(default_factory=list)
    test_vods: list[str] = field(default_factory=list)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0


def split_of(streamer: str, vod_id: str, sel: Selection) -> str:
    """A VOD's split: named explicitly, or from a hash of its identity (stable as the store grows)."""
    if sel.val_vods or sel.test_vods:
        named = lambda vods: vod_id in vods or f"{streamer}/{vod_id}" in vods  # noqa: E731
        return "test" if named(sel.test_vods) else "val" if named(sel.val_vods) else "train"
    h = hashlib.sha256(f"{sel.split_seed}:{streamer}/{vod_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < sel.test_fraction:
        return "test"
    if u < sel.test_fraction + sel.val_fraction:
        return "val"
    return "train"


def select_records(store: Store, sel: Selection) -> list[VodRecord]:
    """The store's records the selection keeps (the store listed now)."""
    return select_from(store.records(sel.streamers or None), sel)


def select_from(records: Iterable[VodRecord], sel: Selection) -> list[VodRecord]:
    """The records of a listing that the selection keeps, in listing order."""
    if sel.split and sel.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {sel.split!r}")
    out = []
    for rec in records:
        s, v = rec.streamer, rec.vod_id
        if sel.streamers and s not in sel.streamers:
            continue
        if sel.vods and v not in sel.vods and f"{s}/{v}" not in sel.vods:
            continue
        if sel.split and split_of(s, v, sel) != sel.split:
            continue
        out.append(rec)
    return out


def shard_urls(store: Store, records: Iterable[VodRecord]) -> list[str]:
    return [store.full_url(sh.path) for rec in records for sh in rec.shards]


def shard_checks(store: Store, records: Iterable[VodRecord]) -> dict[str, tuple[str, int]]:
    """url -> (sha256, bytes) of every shard of the records: what streaming reads verify against."""
    return {store.full_url(sh.path): (sh.sha256, sh.bytes) for rec in records for sh in rec.shards if sh.sha256}


def shard_weights(records: list[VodRecord], streamer_weights: dict[str, float]) -> list[float] | None:
    """Per-shard sampling weights giving each streamer a share proportional to its weight
    (unlisted streamers: 1), whatever its size, so one huge channel does not drown the rest.
    None (no weights asked): shards are drawn uniformly, i.e. in proportion to data."""
    return streamer_shard_weights([rec.streamer for rec in records for _ in rec.shards], streamer_weights)


def streamer_shard_weights(owners: list[str], streamer_weights: dict[str, float]) -> list[float] | None:
    """shard_weights from each shard's streamer."""
    if not streamer_weights:
        return None
    per_streamer: dict[str, int] = {}
    for s in owners:
        per_streamer[s] = per_streamer.get(s, 0) + 1
    return [streamer_weights.get(s, 1.0) / per_streamer[s] for s in owners]


# -- stages ------------------------------------------------------------------------------
def split_by_node(urls: list[Any], rank: int, world_size: int) -> list[Any]:
    return urls[rank::world_size]


def split_by_worker(urls: list[Any]) -> list[Any]:
    info = torch.utils.data.get_worker_info()
    return urls if info is None else urls[info.id :: info.num_workers]


def worker_id() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def resampled(urls: list[str], weights: list[float], rng: random.Random) -> Iterator[str]:
    """Shards drawn with replacement, forever: ranks never run dry, so none waits on another."""
    if not urls:
        raise ValueError("no shards to resample from: the selection matched no VOD in the store")
    while True:
        yield rng.choices(urls, weights)[0]


def open_with_retries(url: str, tries: int = 4, backoff_s: float = 0.5) -> Any:
    """Object stores fail transiently (throttling, resets): retry opening with backoff.
    Reads inside an open file are retried by the filesystem itself (s3fs, gcsfs)."""
    for attempt in range(tries):
        try:
            return fsspec.open(url, "rb").open()
        except FileNotFoundError:
            raise
        except OSError as e:
            if attempt == tries - 1:
                raise
            log.warning("opening %s failed (%s), retrying", url, e)
            time.sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")


class ShardError(ValueError):
    """A shard that does not match its record (size or sha256): changed or corrupt."""


def read_verified(url: str, sha256: str | None = None, nbytes: int | None = None) -> bytes:
    """A whole shard, read once and hashed in memory (no second read) and checked against its
    record before any sample of it is used: a flipped byte is an error naming the shard, never
    silent training on garbage. A shard is at most a few tens of MB, one per reader at a time."""
    with open_with_retries(url) as f:
        data = f.read()  # one read of the storage; the hash is over these very bytes
    h = hashlib.sha256(data)
    if nbytes is not None and len(data) != nbytes:
        raise ShardError(f"shard {url}: {len(data)} bytes but its VOD record says {nbytes}: the shard changed or is "
                         "truncated; run `vod2chat store verify` and re-ingest its VOD (or set data.skip_errors=true)")
    if sha256 and h.hexdigest() != sha256:
        raise ShardError(f"shard {url}: sha256 {h.hexdigest()[:16]}... does not match its VOD record's {sha256[:16]}...: "
                         "the shard changed or is corrupt; run `vod2chat store verify` and re-ingest its VOD "
                         "(or set data.skip_errors=true)")
    return data


def shard_members(data: bytes, url: str) -> list[dict[str, Any]]:
    """The raw members of every sample of a shard held in memory, in tar order, grouped by key
    as webdataset groups them. Plain ustar members (what the store's TarWriter writes) are
    sliced straight from memory; anything else (long names, pax headers) goes through tarfile."""
    out: list[dict[str, Any]] = []
    off, n = 0, len(data)
    while off + 512 <= n:
        hdr = data[off : off + 512]
        if not any(hdr):
            break  # end-of-archive blocks
        if hdr[156:157] not in (b"0", b"\0") or hdr[124] & 0x80 or hdr[345] or (sum(hdr) - sum(hdr[148:156]) + 256) != int(
                hdr[148:156].split(b"\0", 1)[0].strip() or b"-1", 8):
            return list(group_by_keys(tar_file_expander([{"url": url, "stream": io.BytesIO(data)}], handler=reraise)))
        name = hdr[:100].split(b"\0", 1)[0].decode("utf-8")
        size = int(hdr[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        if off + 512 + size > n:
            raise ShardError(f"shard {url}: member {name!r} runs past the end of the file (truncated)")
        body = bytearray(data[off + 512 : off + 512 + size])  # writable: arrays decode from it without a copy
        off += 512 + (size + 511) // 512 * 512
        m = _KEY_EXT.match(name)
        if m is None or name.startswith("__") or "/__" in name:
            continue
        key, ext = m.groups()
        if not out or out[-1]["__key__"] != key:
            out.append({"__key__": key, "__url__": url})
        out[-1][ext] = body
    return out


def open_shards(urls: Iterable[str], handler: Callable[[Exception], bool],
                checks: dict[str, tuple[str, int]] | None = None) -> Iterator[dict[str, Any]]:
    """Open shards in turn. With `checks` (url -> (sha256, bytes) from the records), a shard is
    read whole and verified before its first sample is yielded."""
    for url in urls:
        try:
            if checks and url in checks:
                f = io.BytesIO(read_verified(url, *checks[url]))
            else:
                f = open_with_retries(url)
        except Exception as e:  # noqa: BLE001 - the handler decides
            if not isinstance(e, ShardError):
                e.args = (f"cannot open shard {url}: {e}",)
            if handler(e):
                continue
            raise
        try:
            yield {"url": url, "stream": f}
        finally:
            f.close()


def read_chat(urls: Iterable[str], handler: Callable[[Exception], bool] | None = None,
              checks: dict[str, tuple[str, int]] | None = None) -> Iterator[dict[str, Any]]:
    """The chat block ({"context", "messages"}) of every sample, without decoding the feature
    arrays. With `checks`, each shard is verified against its record first (open_shards)."""
    handler = handler or reraise
    raw = tar_file_expander(open_shards(urls, handler, checks), handler=handler,
                            select_files=lambda f: f.endswith(".chat.json"))
    for sample in group_by_keys(raw):
        if "chat.json" in sample:
            yield json.loads(sample["chat.json"])


def decode(raw: Iterable[dict[str, Any]], handler: Callable[[Exception], bool]) -> Iterator[Sample]:
    for r in raw:
        try:
            yield decode_sample(r)
        except Exception as e:  # noqa: BLE001 - the handler decides
            if not handler(e):
                raise


def shuffle(items: Iterable[Any], bufsize: int, rng: random.Random) -> Iterator[Any]:
    """Reservoir-style shuffle buffer: bounded memory, seeded."""
    buf: list[Any] = []
    for x in items:
        if len(buf) < bufsize:
            buf.append(x)
            continue
        i = rng.randrange(bufsize)
        yield buf[i]
        buf[i] = x
    rng.shuffle(buf)
    yield from buf


def skip_and_warn(e: Exception) -> bool:
    log.warning("skipping: %s", e)
    return True


def skip_and_record(skipped: list[str]) -> Callable[[Exception], bool]:
    """skip_and_warn that also appends each skip, as one line, to `skipped` (for a report)."""
    def handler(e: Exception) -> bool:
        skipped.append(" ".join(str(e).split()))
        return skip_and_warn(e)
    return handler


def reraise(e: Exception) -> bool:
    # webdataset's convention: a handler raises to stop; returning False would end the stream silently.
    raise e


class ShardStream(torch.utils.data.IterableDataset):
    """Samples from a list of shard urls, split by node and by DataLoader worker.

    resample=False: one pass, each sample seen by exactly one (rank, worker).
    resample=True: an endless stream per (rank, worker) with its own seed.
    If there are fewer shards than (ranks x workers), the split falls back to samples
    (every reader opens every shard and keeps every n-th sample), so small stores still give
    every rank disjoint data instead of none.
    """

    def __init__(
        self,
        urls: list[str],
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        resample: bool = False,
        shuffle_shards: bool = True,
        buffer: int = 0,
        skip_errors: bool = False,
        weights: list[float] | None = None,
        checks: dict[str, tuple[str, int]] | None = None,
        skipped: list[str] | None = None,
    ):
        super().__init__()
        self.urls, self.rank, self.world_size = list(urls), rank, world_size
        self.weights = list(weights) if weights is not None else [1.0] * len(self.urls)
        self.seed, self.epoch, self.resample = seed, epoch, resample
        self.shuffle_shards, self.buffer = shuffle_shards, buffer
        # `skipped` collects what was skipped, in this process only (not from DataLoader workers).
        self.handler = (skip_and_record(skipped) if skipped is not None else skip_and_warn) if skip_errors else reraise
        self.checks = checks

    def __iter__(self) -> Iterator[Sample]:
        wid, nworkers = worker_id()
        readers, reader = self.world_size * nworkers, self.rank * nworkers + wid
        rng = random.Random(f"{self.seed}:{self.epoch}:{reader}")
        shards = list(zip(self.urls, self.weights))
        if self.shuffle_shards:
            # Same permutation on every reader, so the split below stays a partition.
            random.Random(f"{self.seed}:{self.epoch}").shuffle(shards)
        sample_split = len(shards) < readers
        if not sample_split:
            shards = split_by_worker(split_by_node(shards, self.rank, self.world_size))
        urls = [u for u, _ in shards]
        stream: Iterable[str] = resampled(urls, [w for _, w in shards], rng) if self.resample else urls
        raw = group_by_keys(tar_file_expander(open_shards(stream, self.handler, self.checks), handler=self.handler))
        samples: Iterable[Sample] = decode(raw, self.handler)
        if sample_split:
            samples = (s for i, s in enumerate(samples) if i % readers == reader)
        if self.buffer > 1:
            samples = shuffle(samples, self.buffer, rng)
        yield from samples


def read_store(store: Store | str, sel: Selection | None = None, **kw: Any) -> ShardStream:
    """Convenience: every sample of a selection, one process."""
    store = store if isinstance(store, Store) else Store(store)
    records = select_records(store, sel or Selection())
    return ShardStream(shard_urls(store, records), checks=kw.pop("checks", shard_checks(store, records)), **kw)
