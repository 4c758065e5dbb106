"""The training stream: pinned to a selection, resumable in O(1), elastic over process counts.

Each reader (one per rank and DataLoader worker) is a small state machine whose whole state is
JSON (no pickle, nothing replayed):

    reader, readers    which partition of the pinned shard list it draws from
    shard_rng          the RNG that draws its next shard (with replacement, weighted)
    queue              shard pieces still to read: [shard, sample position, message, stride]
    buffer             the example shuffle buffer as references [shard, sample position, message]
    shuf_rng           the RNG of the shuffle buffer

Every batch leaves its worker with the state *after* it, so the training loop knows each
stream's state as of the last batch it consumed, however far the DataLoader prefetched. A
checkpoint stores those states; a resume re-reads only the shards the buffers and queues name
(a few shards, whatever the step) instead of replaying the stream from the start.

Same layout on resume (processes, workers, shard list): every stream continues exactly, so the
resumed losses equal the uninterrupted run's. Another layout (N -> M processes, other worker
counts, new VODs joined): the pending work of all old streams (unread pieces, buffered
examples) is dealt round-robin to the new readers, which draw further shards from their new
partitions with RNGs seeded by (seed, step, readers, reader): deterministic for a given
(checkpoint, layout), no example lost or repeated from the pending work, but not the batch
order an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from vod2chat.shards.reader import read_verified, shard_members, streamer_shard_weights, worker_id
from vod2chat.shards.schema import check_shard_path, decode_sample
from vod2chat.shards.store import Store
from vod2chat.trainer.config import DataConfig
from vod2chat.trainer.data import RunSplits, collate, sample_examples
from vod2chat.trainer.tokenizer import ChatTokenizer

log = logging.getLogger(__name__)

PIN_KEYS = ("path", "sha256", "bytes", "samples", "messages", "streamer", "vod_id")


@dataclass(frozen=True)
class PinnedShard:
    """One shard of the selection a run trains on, as its checkpoint pins it (selection.json):
    where it is, its checksum and size, its counts and its owner. Read back from shared storage
    by `from_json`, which checks every field and that the path is a plain shard path of its streamer."""

    path: str
    sha256: str
    bytes: int
    samples: int
    messages: int
    streamer: str
    vod_id: str

    @classmethod
    def from_json(cls, sh: Any, where: str) -> PinnedShard:
        if not isinstance(sh, dict) or any(k not in sh for k in PIN_KEYS):
            raise ValueError(f"{where}: every shard needs {PIN_KEYS}; the checkpoint is damaged")
        for k in PIN_KEYS:
            want = int if k in ("bytes", "samples", "messages") else str
            if not isinstance(sh[k], want) or isinstance(sh[k], bool):
                raise ValueError(f"{where}: shard {k}={sh[k]!r} is not {want.__name__}; the checkpoint is damaged")
        check_shard_path(sh["path"], sh["streamer"], where)
        return cls(**{k: sh[k] for k in PIN_KEYS})

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in PIN_KEYS}


# -- the pinned selection ----------------------------------------------------------------------
def pin_selection(cfg: DataConfig, split: str = "train", splits: RunSplits | None = None) -> list[PinnedShard]:
    """The split's shards as the checkpoint pins them: path, checksum, counts, owner."""
    records = (splits or RunSplits(cfg)).require(split)
    # messages unknown (a record without counts): assume some, so the shard is drawn
    shards = [PinnedShard(path=sh.path, sha256=sh.sha256 or "", bytes=sh.bytes, samples=sh.samples,
                          messages=1 if sh.messages is None else sh.messages, streamer=rec.streamer, vod_id=rec.vod_id)
              for rec in records for sh in rec.shards]
    check_has_messages(shards, cfg.store, split)
    return shards


def check_has_messages(shards: list[PinnedShard], store: str, split: str = "train") -> None:
    """A split without a single message would make every reader draw shards forever."""
    if any(sh.messages > 0 for sh in shards):
        return
    vods = sorted({f"{sh.streamer}/{sh.vod_id}" for sh in shards})
    shown = ", ".join(vods[:20]) + (f" and {len(vods) - 20} more" if len(vods) > 20 else "")
    raise ValueError(f"the {split} split of {store} selects {len(vods)} VOD(s) ({shown}) but they hold 0 messages: "
                     "nothing to learn. Their chat probably misses the video (check the chat offsets; "
                     "`vod2chat store ls` shows messages per VOD), or select other VODs with data.vods/data.streamers")


def join_new(pinned: list[PinnedShard], current: list[PinnedShard]) -> list[PinnedShard]:
    """Shards of the current selection the pinned one lacks, appended (indices of the pinned
    shards never move, so the saved stream states stay valid)."""
    have = {sh.path for sh in pinned}
    return [sh for sh in current if sh.path not in have]


# -- reader states -----------------------------------------------------------------------------
def _rng(seed: str) -> list[Any]:
    v, mt, g = random.Random(seed).getstate()
    return [v, list(mt), g]


def fresh_state(reader: int, readers: int, seed: int, salt: str = "") -> dict[str, Any]:
    return {"reader": reader, "readers": readers, "shard_rng": _rng(f"{seed}:{salt}shards:{reader}"),
            "shuf_rng": _rng(f"{seed}:{salt}shuffle:{reader}"), "queue": [], "buffer": [], "skipped": []}


def layout(world_size: int, num_workers: int, n_shards: int) -> dict[str, int]:
    return {"world_size": world_size, "num_workers": num_workers, "shards": n_shards}


def start_states(saved: list[dict[str, Any]] | None, old_layout: dict[str, int] | None, rank: int, world_size: int,
                 num_workers: int, n_shards: int, seed: int, step: int) -> list[dict[str, Any]]:
    """This rank's per-worker start states. `saved`: every old rank's saved data state
    ({"next_worker", "streams"}), in rank order; None: a fresh run."""
    nw = max(1, num_workers)
    readers = world_size * nw
    if not saved:
        return [fresh_state(rank * nw + w, readers, seed) for w in range(nw)]
    if old_layout == layout(world_size, num_workers, n_shards):
        # The DataLoader of this process starts again at worker 0: rotate so that new worker 0 is
        # the old worker whose batch was next, and every stream keeps its own identity.
        mine = saved[rank]
        j = mine["next_worker"]
        return [mine["streams"][(w + j) % nw] for w in range(nw)]
    old = sorted((s for r in saved for s in r["streams"]), key=lambda s: s["reader"])
    buffer = [ref for s in old for ref in s["buffer"]]
    queue = [piece for s in old for piece in s["queue"]]
    skipped = sorted({p for s in old for p in s.get("skipped", [])})
    out = []
    for w in range(nw):
        r = rank * nw + w
        st = fresh_state(r, readers, seed, salt=f"{step}:{readers}:")
        st.update(buffer=buffer[r::readers], queue=queue[r::readers], skipped=skipped if r == 0 else [])
        out.append(st)
    return out


# -- the stream ----------------------------------------------------------------------------------
@dataclass
class DataPlan:
    """What this rank streams: the pinned shard list, its history, and where each worker starts."""

    shards: list[PinnedShard]
    states: list[dict[str, Any]]
    num_workers: int
    changes: list[dict[str, Any]] = field(default_factory=list)


class _Opaque:
    """Carries a state through the DataLoader untouched (pin_memory and collate recurse into
    lists and dicts; 4096 buffer references per batch would cost more than the batch)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def partition(shards: list[PinnedShard], reader: int, readers: int, seed: int,
              streamer_weights: dict[str, float]) -> tuple[list[int], list[float], int, int]:
    """(shard indices, weights, first sample position, stride) of one reader. Shards without
    messages are never drawn. The same permutation on every reader keeps the split a partition;
    with fewer shards than readers every reader draws every shard and keeps every n-th sample."""
    w_all = streamer_shard_weights([sh.streamer for sh in shards], streamer_weights) \
        or [1.0] * len(shards)
    ok = [i for i, sh in enumerate(shards) if sh.messages > 0]
    random.Random(f"{seed}:partition").shuffle(ok)
    if len(ok) >= readers:
        idx, start, stride = ok[reader::readers], 0, 1
    else:
        idx, start, stride = ok, reader, readers
    return idx, [w_all[i] for i in idx], start, stride


class TrainStream(torch.utils.data.IterableDataset):
    """Endless batches of one rank: each DataLoader worker runs one reader from its start
    state and yields (batch, its state after that batch)."""

    def __init__(self, shards: list[PinnedShard], tok: ChatTokenizer, cfg: DataConfig, micro_batch: int,
                 seed: int, states: list[dict[str, Any]]):
        super().__init__()
        store = Store(cfg.store)
        self.urls = [store.full_url(sh.path) for sh in shards]
        self.shards, self.tok, self.cfg, self.micro_batch = shards, tok, cfg, micro_batch
        self.seed, self.states = seed, states

    def __iter__(self) -> Iterator[tuple[dict[str, Any] | None, _Opaque]]:
        wid, _ = worker_id()
        return Reader(self, self.states[wid]).batches()


class Reader:
    def __init__(self, ds: TrainStream, st: dict[str, Any]):
        self.ds, self.cfg = ds, ds.cfg
        self.reader, self.readers = st["reader"], st["readers"]
        self.shard_rng, self.shuf_rng = random.Random(), random.Random()
        self.shard_rng.setstate((st["shard_rng"][0], tuple(st["shard_rng"][1]), st["shard_rng"][2]))
        self.shuf_rng.setstate((st["shuf_rng"][0], tuple(st["shuf_rng"][1]), st["shuf_rng"][2]))
        self.queue = [list(p) for p in st["queue"]]
        self.skipped = list(st.get("skipped", []))
        self.idx, self.weights, self.start, self.stride = partition(ds.shards, self.reader, self.readers, ds.seed,
                                                                    self.cfg.streamer_weights)
        if not self.idx:
            raise ValueError(f"no shard with messages to draw from ({len(ds.shards)} pinned)")
        self._cache: dict[int, list[dict[str, Any]] | None] = {}
        refs = [tuple(r) for r in st["buffer"]]
        self.buf = self._restore(refs)
        self.refs = [self._ref(e) for e in self.buf]
        # The shard the queue continues in was probably just read for the buffer: keep only that one.
        head = self.queue[0][0] if self.queue else None
        self._cache = {head: self._cache[head]} if head in self._cache else {}

    # -- reading ------------------------------------------------------------------------------
    def _members(self, s: int) -> list[dict[str, Any]] | None:
        """A shard's samples, verified against the pinned checksum; None if skipped."""
        sh = self.ds.shards[s]
        try:
            members = shard_members(read_verified(self.ds.urls[s], sh.sha256, sh.bytes), self.ds.urls[s])
        except Exception as e:  # noqa: BLE001 - corrupt or missing: an error, or a recorded skip
            if not self.cfg.skip_errors:
                raise
            log.warning("skipping shard %s: %s", sh.path, e)
            self.skipped.append(sh.path)
            members = None
        return members

    def _examples_of(self, s: int, members: list[dict[str, Any]], p: int, first: int) -> list[Any]:
        raw = members[p]
        try:
            return self._decode(raw, s, p, first)
        except Exception as e:  # noqa: BLE001
            if not self.cfg.skip_errors:
                raise ValueError(f"sample {raw.get('__key__', p)} of shard {self.ds.shards[s].path}: {e}") from e
            log.warning("skipping sample %s of %s: %s", raw.get("__key__", p), self.ds.shards[s].path, e)
            self._record_skip(f"{self.ds.shards[s].path}#{raw.get('__key__', p)}")
            return []

    # The three ways an example is seen: bench/stream_advance.py overrides them to run a stream forward cheaply.
    def _decode(self, raw: dict[str, Any], s: int, p: int, first: int) -> list[Any]:
        return list(sample_examples(decode_sample(raw), self.ds.tok, self.cfg, s, p, first))

    @staticmethod
    def _ref(e: Any) -> tuple[int, int, int]:
        return e.ref

    def _collate(self, batch: list[Any]) -> dict[str, Any] | None:
        return collate(batch, self.ds.tok.pad_id)

    def _record_skip(self, what: str) -> None:
        # Recorded once: a resampled shard is read again and again, and its bad sample with it.
        if what not in self.skipped:
            self.skipped.append(what)

    def _restore(self, refs: list[tuple[int, int, int]]) -> list[Any]:
        """The shuffle buffer from its references: each named shard read once."""
        by_sample: dict[tuple[int, int], dict[int, Any]] = {}
        for s, p, i in refs:
            by_sample.setdefault((s, p), {})[i] = None
        for (s, p), want in by_sample.items():
            if s not in self._cache:
                self._cache[s] = self._members(s)
            members = self._cache[s]
            if members is None:
                continue
            for e in self._examples_of(s, members, p, 0):
                i = self._ref(e)[2]
                if i in want:
                    want[i] = e
        return [by_sample[(s, p)][i] for s, p, i in refs if by_sample[(s, p)].get(i) is not None]

    def _examples(self) -> Iterator[Any]:
        idle = 0  # pieces in a row without an example: a partition with nothing to learn must stop
        while True:
            if not self.queue:
                s = self.shard_rng.choices(self.idx, self.weights)[0]
                self.queue.append([s, self.start, 0, self.stride])
            piece = self.queue[0]
            s = piece[0]
            members = self._cache.pop(s) if s in self._cache else self._members(s)
            produced = False
            while members is not None and piece[1] < len(members):
                p, first = piece[1], piece[2]
                for e in self._examples_of(s, members, p, first):
                    piece[2] += 1  # consumed through this message: a snapshot resumes after it
                    produced = True
                    yield e
                piece[1], piece[2] = p + piece[3], 0
            self.queue.pop(0)
            idle = 0 if produced else idle + 1
            if idle > max(100, 10 * len(self.idx)):
                raise ValueError(f"reader {self.reader}/{self.readers} read {idle} shards in a row without a single "
                                 f"message (of {len(self.idx)} it draws from, e.g. {self.ds.shards[s].path}): "
                                 "corrupt or empty shards; check `vod2chat store verify` and the VODs' message counts")

    def state(self) -> dict[str, Any]:
        sr, ss = self.shard_rng.getstate(), self.shuf_rng.getstate()
        return {"reader": self.reader, "readers": self.readers, "shard_rng": [sr[0], sr[1], sr[2]],
                "shuf_rng": [ss[0], ss[1], ss[2]], "queue": [list(p) for p in self.queue], "buffer": list(self.refs),
                "skipped": list(self.skipped)}

    def batches(self) -> Iterator[tuple[dict[str, Any] | None, _Opaque]]:
        size, mb, batch = self.cfg.shuffle_buffer, self.ds.micro_batch, []
        buf, refs = self.buf, self.refs
        for e in self._examples():
            if size > 1:
                if len(buf) < size:
                    buf.append(e)
                    refs.append(self._ref(e))
                    continue
                i = self.shuf_rng.randrange(size)
                e, buf[i] = buf[i], e
                refs[i] = self._ref(buf[i])
            batch.append(e)
            if len(batch) == mb:
                yield self._collate(batch), _Opaque(self.state())
                batch = []


class TrainBatches:
    """The training loop's side of the stream: batches in DataLoader order, and every worker's
    state as of the last batch consumed (what a checkpoint saves)."""

    def __init__(self, loader: torch.utils.data.DataLoader, states: list[dict[str, Any]]):
        self.it, self.states, self.next_worker = iter(loader), list(states), 0

    def __next__(self) -> dict[str, Any]:
        batch, st = next(self.it)
        # In-order DataLoaders take batches from workers round-robin: this one came from next_worker.
        self.states[self.next_worker] = st.value
        self.next_worker = (self.next_worker + 1) % len(self.states)
        return batch

    def __iter__(self) -> "TrainBatches":
        return self

    def state(self) -> dict[str, Any]:
        return {"next_worker": self.next_worker, "streams": self.states}


def make_train_loader(shards: list[PinnedShard], tok: ChatTokenizer, cfg: DataConfig, micro_batch: int,
                      seed: int, states: list[dict[str, Any]], num_workers: int) -> TrainBatches:
    """This rank's endless training batches from its start states (one per worker). The split
    happens here, once: never pass the loader through accelerator.prepare."""
    ds = TrainStream(shards, tok, cfg, micro_batch, seed, states)
    cuda = torch.cuda.is_available()
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=num_workers, collate_fn=_identity, pin_memory=cuda,
        persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None,
        # Its own generator: iter(loader) must not draw from the global RNG, or a resumed run's
        # dropout would drift from the original.
        generator=torch.Generator().manual_seed(seed))
    return TrainBatches(loader, states)


def _identity(x: Any) -> Any:
    return x
