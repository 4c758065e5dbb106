"""Fan ingest out over Ray: thin actors around ingest.worker, a driver that schedules parts.

Each actor holds the encoders (one per GPU, else one per CPU slot). The driver plans every VOD,
spreads its parts (time ranges, one shard each) over the actors, retries a part whose actor
died (on a fresh actor) or failed, reports a VOD that keeps failing without stopping the others,
and commits each VOD's record as soon as all of its shards are written.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError
from tqdm import tqdm

from vod2chat.config import replaced
from vod2chat.ingest.config import IngestConfig
from vod2chat.ingest.encoders import check_weights
from vod2chat.ingest.errors import NotRetryable
from vod2chat.ingest.precision import ENV, cpu_kind, cpu_model, forced_kind, runs_natively, store_precision
from vod2chat.ingest.features import ingest_encoders
from vod2chat.ingest.worker import VodJob, VodPlan, commit_vod, find_pairs, ingest_part, plan_vod
from vod2chat.shards.schema import ShardInfo, VodRecord
from vod2chat.shards.store import Store, chat_counts, chat_warning

log = logging.getLogger(__name__)
ACTOR_PREFIX = "vod2chat-ingest-"
NAMESPACE = "vod2chat"


@ray.remote
class IngestActor:
    """Holds the encoders; every method is a one-line call into ingest.worker."""

    def __init__(self, cfg: IngestConfig):
        # As many torch threads as CPUs reserved: Ray's default for an actor is one.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))
        self.cfg, self.store, self.enc = cfg, Store(cfg.store), ingest_encoders(cfg)

    def info(self) -> dict[str, Any]:
        dev = self.enc.video.device
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "fingerprints": self.enc.fingerprints(), "torch_threads": torch.get_num_threads(),
                "precision": self.enc.video.precision, "native": runs_natively(self.enc.video.precision, dev),
                "cpu": cpu_model(), "kind": cpu_kind() if dev.type == "cpu" else dev.type}

    def use_precision(self, precision: str) -> dict[str, Any]:
        """Rebuild the encoders in the store's precision (when this node's `auto` chose another)."""
        if self.enc.video.precision != precision:
            self.cfg = replaced(self.cfg, {"encoders.precision": precision})
            self.enc = ingest_encoders(self.cfg)
        return self.info()

    def plan(self, job: VodJob) -> VodPlan | None:
        return plan_vod(job, self.cfg, self.enc.fingerprints(), self.store)

    def part(self, plan: VodPlan, i: int) -> tuple[ShardInfo, str, dict[str, float]]:
        t0 = time.perf_counter()
        info = ingest_part(plan, i, self.store, self.enc, self.cfg)
        stages = self.enc.take_stages()
        stages["in actor"] = time.perf_counter() - t0
        return info, ray.get_runtime_context().get_node_id(), stages


@dataclass
class IngestSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # vod -> error naming the file
    hours: float = 0.0
    messages: int = 0
    shards: int = 0
    wall_s: float = 0.0
    nodes: set[str] = field(default_factory=set)
    retries: int = 0
    stages: dict[str, float] = field(default_factory=dict)  # seconds: start-up, plan, per-stage sums over parts
    chat: dict[str, dict[str, int]] = field(default_factory=dict)  # vod -> kept / dropped / malformed / truncated
    warnings: list[str] = field(default_factory=list)  # VODs that keep less than half of their chat, slow nodes
    unpaired: list[str] = field(default_factory=list)  # inputs that did not pair, one line naming each file
    truncated: dict[str, int] = field(default_factory=dict)  # vod -> messages cut to max_message_chars
    precision: str = ""  # the store's, that every part was computed in

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unpaired

    def add_record(self, vod: str, rec: VodRecord) -> None:
        self.done.append(vod)
        self.hours += rec.duration / 3600
        self.messages += rec.messages
        self.shards += len(rec.shards)
        self.chat[vod] = chat_counts(rec)
        warning = chat_warning(vod, **self.chat[vod], duration=rec.duration)
        self.chat[vod]["truncated"] = self.truncated.get(vod, 0)
        if warning:
            log.warning(warning)
            self.warnings.append(warning)

    def table(self) -> str:
        rate = self.hours * 3600 / self.wall_s if self.wall_s else 0.0
        lines = [f"{'VOD':<32} {'kept':>8} {'dropped':>8} {'malformed':>9} {'truncated':>9}   chat messages "
                 "(dropped: outside the video; truncated: cut to max_message_chars)"]
        lines += [f"{vod:<32} {c['kept']:>8} {c['dropped']:>8} {c['malformed']:>9} {c.get('truncated', 0):>9}"
                  for vod, c in sorted(self.chat.items())]
        lines += [
            f"VODs: {len(self.done)} done, {len(self.skipped)} skipped (already in store), {len(self.failed)} failed",
            f"ingested: {self.hours:.3f} h of VOD, {self.messages} messages, {self.shards} shards "
            f"on {len(self.nodes)} node(s), {self.retries} retried part(s)",
            f"speed: {rate:.1f} VOD-seconds per wall-second ({self.wall_s:.1f} s wall)",
        ]
        if self.precision:
            lines.append(f"precision: {self.precision} (the store's)")
        if self.stages:
            lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stages.items()))
        lines += [f"WARNING {w}" for w in self.warnings]
        lines += [f"FAILED {vod}: {err}" for vod, err in sorted(self.failed.items())]
        lines += [f"UNPAIRED {p}" for p in self.unpaired]
        return "\n".join(lines)


def init_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    else:
        # A single-node Ray bound to loopback only: nothing outside this machine can reach it.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)


def _actor_options(cpus: float, use_gpu: bool) -> dict[str, Any]:
    opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": cpus} if use_gpu else {"num_cpus": cpus}
    if forced_kind():  # the driver runs as the other CPU kind: so do its actors
        opts["runtime_env"] = {"env_vars": {ENV: forced_kind()}}
    return opts


def _largest_node_cpus() -> float:
    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0) or 1.0


class _Pool:
    """Actors by slot; a dead actor's slot gets a fresh actor."""

    def __init__(self, cfg: IngestConfig):
        gpus = ray.cluster_resources().get("GPU", 0) if cfg.device != "cpu" else 0
        cpus = ray.cluster_resources().get("CPU", 1)
        # device=cuda asks for GPU actors even before any GPU node is up: an autoscaling cluster
        # starts GPU workers for them, where `auto` would settle for CPU actors on the GPU nodes.
        use_gpu = cfg.device == "cuda" or bool(gpus)
        if use_gpu and not (cfg.num_actors or gpus):
            raise ValueError("device=cuda but the cluster has no GPUs yet: pass --num-actors N to have the "
                             "autoscaler start N GPU workers")
        # CPUs per actor: never more than a node has (an actor that cannot fit would wait forever),
        # and shared out when more CPU actors are asked for than fit at that size.
        per = min(cfg.cpus_per_actor, _largest_node_cpus()) if cfg.cpus_per_actor > 0 else 1.0
        n = cfg.num_actors or (int(gpus) if use_gpu else max(1, int(cpus // per)))
        if not use_gpu and n * per > cpus:
            per = max(cpus // n, min(1.0, cpus / n))
        self.cfg, self.opts = cfg, _actor_options(per, use_gpu)
        self.actors = [self._new(i) for i in range(n)]

    def _new(self, slot: int) -> Any:
        name = f"{ACTOR_PREFIX}{slot}-{time.monotonic_ns()}"
        return IngestActor.options(name=name, lifetime="non_detached", **self.opts).remote(self.cfg)

    def replace(self, slot: int) -> None:
        try:
            ray.kill(self.actors[slot])
        except Exception:  # noqa: BLE001 - it is already dead
            pass
        self.actors[slot] = self._new(slot)


def _plan_all(pool: _Pool, jobs: list[VodJob], summary: IngestSummary) -> dict[str, VodPlan]:
    """Plan every VOD (probe + chat parse) on the actors: they see the files as workers will.
    A VOD that fails to plan is reported in the summary and the others go on."""
    planned = {pool.actors[i % len(pool.actors)].plan.remote(j): j for i, j in enumerate(jobs)}
    plans: dict[str, VodPlan] = {}
    for ref, job in planned.items():
        vod = f"{job.streamer}/{job.vod_id}"
        try:
            plan = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - reported, the others go on
            summary.failed[vod] = _reason(e)
            continue
        if plan is None:
            summary.skipped.append(vod)
        else:
            plans[vod] = plan
            summary.truncated[vod] = plan.chat_truncated
    return plans


def main(cfg: IngestConfig) -> IngestSummary:
    """Ingest every VOD of cfg.inputs into cfg.store on a local Ray or the cluster at cfg.address."""
    t0 = time.perf_counter()
    pairing = find_pairs(cfg.inputs, cfg.streamer)
    if not pairing.jobs:
        raise ValueError(f"nothing to ingest: no video pairs with a chat log ({len(pairing.problems)} problem(s)): "
                         + " | ".join(pairing.problems))
    jobs = pairing.jobs
    for p in pairing.problems:  # said now, and again in the summary; the pairs go on
        log.warning("not ingested: %s", p)
    # The driver runs on a node of the cluster (`ray up` puts the weights on every node): a missing
    # file is reported here, alone, before any actor starts.
    check_weights(cfg.encoders.video_weights, cfg.encoders.audio_weights)
    store, summary = Store(cfg.store), IngestSummary(unpaired=list(pairing.problems))
    pinned = store_precision(cfg.encoders.precision, store.precision(), store.url)
    init_ray(cfg.address)
    pool = _Pool(replaced(cfg, {"encoders.precision": pinned}) if pinned else cfg)
    fingerprints = _settle_precision(pool, store, summary, cfg.encoders.precision)
    summary.stages["start-up"] = time.perf_counter() - t0
    store.check_fingerprints(fingerprints)

    plans = _plan_all(pool, jobs, summary)
    store.check_fingerprints(fingerprints)
    summary.stages["plan"] = time.perf_counter() - t0 - summary.stages["start-up"]

    plan_refs = {vod: ray.put(p) for vod, p in plans.items()}  # shipped once, not once per part
    queue = deque((vod, i, 0) for vod, p in plans.items() for i in range(len(p.parts)))
    shards: dict[str, dict[int, ShardInfo]] = {vod: {} for vod in plans}
    total_s = sum(p.media.duration for p in plans.values())
    bar = tqdm(total=len(queue), unit="part", desc="ingest", disable=not cfg.progress)
    running: dict[Any, tuple[int, Any, str, int, int]] = {}
    # Each actor appears parts_in_flight times: its next part waits in its queue, not in the driver.
    free = deque(slot for _ in range(max(1, cfg.parts_in_flight)) for slot in range(len(pool.actors)))
    while queue or running:
        while queue and free:
            vod, i, tries = queue.popleft()
            if vod in summary.failed:
                continue
            slot = free.popleft()
            actor = pool.actors[slot]
            running[actor.part.remote(plan_refs[vod], i)] = (slot, actor, vod, i, tries)
        if not running:
            continue
        [ref], _ = ray.wait(list(running), num_returns=1)
        slot, actor, vod, i, tries = running.pop(ref)
        try:
            info, node, stages = ray.get(ref)
        except Exception as e:  # noqa: BLE001
            if isinstance(e, RayActorError) and pool.actors[slot] is actor:
                pool.replace(slot)  # the process is gone (OOM, killed, node lost); once per death
            if tries < cfg.max_retries and not isinstance(getattr(e, "cause", None) or e, NotRetryable):
                summary.retries += 1
                log.warning("retrying %s part %d (%s)", vod, i, _reason(e))
                queue.append((vod, i, tries + 1))
            else:
                summary.failed[vod] = _reason(e)
            free.append(slot)
            continue
        free.append(slot)
        summary.nodes.add(node)
        for k, v in stages.items():
            summary.stages[k] = summary.stages.get(k, 0.0) + v
        shards[vod][i] = info
        bar.update(1)
        if len(shards[vod]) == len(plans[vod].parts) and vod not in summary.failed:
            p = plans[vod]
            rec = commit_vod(p, [shards[vod][k] for k in range(len(p.parts))], store, fingerprints,
                             time.perf_counter() - t0)
            summary.add_record(vod, rec)
            bar.set_postfix(vod_s_per_s=f"{summary.hours * 3600 / (time.perf_counter() - t0):.1f}", of=f"{total_s:.0f}s")
    bar.close()
    summary.wall_s = time.perf_counter() - t0
    return summary


def dry_run(cfg: IngestConfig) -> tuple[str, bool]:
    """What `ingest` would do with cfg.inputs, without Ray or encoders: each pair with its chat
    format (the parser's own detection), what does not pair and why. -> (report, all pairable)."""
    from vod2chat.ingest.chat import ChatFormatError, detect_format
    from vod2chat.ingest.inputs import is_url, localize
    from vod2chat.ingest.media import MediaError, probe

    pairing = find_pairs(cfg.inputs, cfg.streamer)
    lines, ok = [], not pairing.problems
    for job in tqdm(pairing.jobs, unit="VOD", desc="dry run", disable=not cfg.progress or len(pairing.jobs) < 5):
        try:
            # The real ingest allows a chat log this big for this video; URL videos are not fetched here.
            duration = probe(job.video).duration if not is_url(job.video) else 12 * 3600.0
            chat = localize(job.chat, cfg.input_cache, cfg.input_cache_gb)
            what = f"chat format {detect_format(chat, cfg.chat_max_bytes(duration))}"
        except (ChatFormatError, MediaError, OSError) as e:
            what, ok = f"CANNOT INGEST: {e}", False
        lines.append(f"{job.streamer}/{job.vod_id}: {job.video} + {job.chat}: {what}")
    lines += [f"UNPAIRED {p}" for p in pairing.problems]
    lines += [f"ignored  {c}: a chat log without a video" for c in pairing.lone_chats]
    lines.append(f"{len(pairing.jobs)} pair(s), {len(pairing.problems)} input problem(s); dry run: nothing started")
    return "\n".join(lines), ok


def _settle_precision(pool: _Pool, store: Store, summary: IngestSummary, requested: str) -> dict[str, Any]:
    """Every actor computes in the store's precision: a new store takes the first actor's (its
    device's `auto`) and pins it; an actor whose node chose otherwise rebuilds its encoders; a node
    that cannot run it natively is named once and runs it anyway. The fingerprints to write."""
    infos = ray.get([a.info.remote() for a in pool.actors])
    precision = store.pin_precision(infos[0]["precision"], infos[0]["cpu"])
    store_precision(requested, precision, store.url)  # another ingest may have pinned the store meanwhile
    if any(i["precision"] != precision for i in infos):
        infos = ray.get([a.use_precision.remote(precision) for a in pool.actors])
    pool.cfg = replaced(pool.cfg, {"encoders.precision": precision})  # actors started later: explicit
    summary.precision = precision
    for node, info in {i["node"]: i for i in infos if not i["native"]}.items():
        msg = (f"node {node[:12]} ({info['cpu']}, CPU kind {info['kind']}) has no native {precision}: it computes "
               f"the store's {precision} anyway, several times slower than fp32")
        log.warning(msg)
        summary.warnings.append(msg)
    return infos[0]["fingerprints"]


def _reason(e: BaseException) -> str:
    """The innermost error message, which names the file (Ray wraps task errors)."""
    cause = getattr(e, "cause", None) or e
    return f"{type(cause).__name__}: {cause}".strip().splitlines()[0][:500] if str(cause) else type(cause).__name__
