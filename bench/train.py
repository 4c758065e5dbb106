"""Training throughput, side by side in one run on this machine.

    .venv/bin/python bench/train.py                      # CPU, d_model 256, ~2 minutes on 2 cores
    .venv/bin/python bench/train.py --device cuda --batch 64 --steps 50 --mixed-precision bf16

(a) The data path: the real train step (trainer.steps.train_step under an Accelerator) fed by
    trainer.data.make_loader streaming from a shard store on disk, against the very same
    batches pre-collected in memory. Their ratio is what the loader costs.
(b) The model: vod2chat's VodChatModel (full A/V sequences, causal decoder over chat context
    + message, BPE) against the prototype's model (bench/prototype.py: one averaged A/V vector,
    nn.Transformer without a causal mask, word vocabulary) at the same width, forward+backward
    on the same examples.

The store is written here with the ingest layout (30 s segments, 20 s look-back, 1 fps video,
0.96 s audio windows, 8 context messages, 120 segments per shard) and random features of the
real shapes; chat is Zipf-distributed pseudo-words, so the word vocabulary is as long-tailed
as real chat's. Every figure printed is measured in this run.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]

import numpy as np
import torch

from bench.prototype import PrototypeConfig, PrototypeModel, WordVocab, prototype_batch, prototype_loss
from bench.stream_advance import advance
from vod2chat.ingest import align
from vod2chat.ingest.precision import machine_line
from vod2chat.shards.schema import Sample, VodRecord, sample_key
from vod2chat.shards.store import Store
from vod2chat.trainer.config import DataConfig, TrainConfig
from vod2chat.trainer import checkpoint, stream
from vod2chat.trainer.data import iter_texts
from vod2chat.trainer.batch import to_device, token_loss
from vod2chat.trainer.steps import build_optimizer, train_step
from vod2chat.trainer.model import ModelConfig, VodChatModel
from vod2chat.trainer.tokenizer import ChatTokenizer

FP = {"video": {"model": "bench-random", "fps": 1.0}, "audio": {"model": "bench-random"}}


# -- a store with the ingest layout and realistic shapes ------------------------------------
@dataclass
class Msg:
    t: float
    user: str
    text: str


def pseudo_words(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    return ["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(n)]


def chat_messages(rng: np.random.Generator, duration: float, rate: float, words: list[str]) -> list[Msg]:
    """Poisson arrivals; 1-12 words per message drawn from a Zipf law (chat's long tail)."""
    n = rng.poisson(rate * duration)
    ts = np.sort(rng.uniform(0, duration, size=n))
    out = []
    for t in ts:
        idx = (rng.zipf(1.3, size=rng.integers(1, 13)) - 1) % len(words)
        out.append(Msg(float(t), f"user{rng.integers(0, 500)}", " ".join(words[i] for i in idx)))
    return out


def build_store(root: Path, vods: int, duration: float, rate: float, seed: int = 0, segment_s: float = 30.0,
                lookback_s: float = 20.0, fps: float = 1.0, context: int = 8, per_shard: int = 120) -> Store:
    rng = np.random.default_rng(seed)
    store = Store(str(root))
    words = pseudo_words(rng, 20000)
    for v in range(vods):
        vod = str(2000 + v)
        msgs = chat_messages(rng, duration, rate, words)
        times = [m.t for m in msgs]
        segs = align.plan_segments(duration, segment_s, lookback_s, fps)
        video = rng.standard_normal((align.n_video_rows(duration, fps), 2048)).astype(np.float16)
        audio = rng.standard_normal((align.n_audio_rows(duration), 128)).astype(np.float16)
        shards = []
        for k, part in enumerate(align.plan_parts(segs, per_shard)):
            samples = [Sample(
                key=sample_key("bench", vod, s.index), video=video[s.v0:s.v1], audio=audio[s.a0:s.a1],
                chat=align.chat_for_segment(times, msgs, s, s.index == len(segs) - 1, context),
                meta={"streamer": "bench", "vod_id": vod, "segment": s.index, "start": s.start, "end": s.end,
                      "lookback": lookback_s, "video_t0": s.v0 / fps, "fps": fps,
                      "audio_t0": s.a0 * align.AUDIO_HOP, "audio_hop": align.AUDIO_HOP,
                      "audio_win": align.AUDIO_HOP, "fingerprints": {}},
            ) for s in part]
            shards.append(store.write_shard(store.shard_rel("bench", vod, k), samples))
        store.commit_record(VodRecord(streamer="bench", vod_id=vod, duration=duration, segments=len(segs),
                                      messages=sum(s.messages for s in shards), fingerprints=FP, shards=shards))
    return store


# -- timing helpers -----------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Rate:
    examples_s: float  # per wall-second
    tokens_s: float
    examples_cpu_s: float  # per CPU-second of this process: less sensitive to other processes' load
    peak_mib: float | None = None


Step = Callable[[int], tuple[int, int]]  # step(i) -> (examples, loss tokens)


def interleaved(steps_fns: dict[str, Step], warmup: int, steps: int, block: int, device: torch.device
                ) -> dict[str, Rate]:
    """Runs the step functions in alternating blocks of `block` steps and times each block.
    Alternating means a burst of load from other processes on a shared machine hits every
    contender alike instead of whichever happened to run during it."""
    for fn in steps_fns.values():
        for i in range(warmup):
            fn(i)
    sync(device)
    secs = {k: [0.0, 0.0] for k in steps_fns}  # wall, CPU
    counts = {k: [0, 0] for k in steps_fns}
    for start in range(warmup, warmup + steps, block):
        for name, fn in steps_fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(start, min(start + block, warmup + steps)):
                e, k = fn(i)
                counts[name][0] += e
                counts[name][1] += k
            sync(device)
            secs[name][0] += time.perf_counter() - t0
            secs[name][1] += time.process_time() - c0
    return {k: Rate(counts[k][0] / secs[k][0], counts[k][1] / secs[k][0], counts[k][0] / secs[k][1])
            for k in steps_fns}


def peak_memory(make: Callable[[], Step], steps: int, device: torch.device) -> float | None:
    """GPU memory a contender adds on top of what is already resident (model, optimizer state,
    activations), measured alone."""
    if device.type != "cuda":
        return None
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn = make()
    for i in range(steps):
        fn(i)
    sync(device)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    del fn
    gc.collect()
    return peak


def autocast(device: torch.device, mp: str):
    if mp == "no":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mp == "bf16" else torch.float16)


# -- (a) streamed from the store vs in memory, the real train step ------------------------
class TrainRig:
    """The trainer's pieces (model, optimizer, scheduler under an Accelerator), rebuilt from
    the same initial weights for every measurement so each one starts from the same state."""

    def __init__(self, args: argparse.Namespace, mcfg: ModelConfig, acc: Any):
        torch.manual_seed(0)
        self.init = VodChatModel(mcfg).state_dict()
        self.mcfg, self.acc = mcfg, acc
        self.tc = TrainConfig(steps=10_000, warmup_steps=1, micro_batch=args.batch, global_batch=args.batch)

    def fresh(self):
        model = VodChatModel(self.mcfg)
        model.load_state_dict(self.init)
        opt, sched = build_optimizer(model, self.tc)
        return self.acc.prepare(model, opt, sched)

    def step_fn(self, next_batch: Callable[[int], dict[str, Any]], seen: list[list[str]] | None = None):
        model, opt, sched = self.fresh()

        def step(i: int) -> tuple[int, int]:
            b = to_device(next_batch(i), self.acc.device)
            if seen is not None:
                seen.append(b["keys"])
            out = train_step(model, opt, sched, [b], self.acc, self.tc.grad_clip)
            return out["examples"], out["tokens"]
        return step


def bench_loader(args, dcfg: DataConfig, tok: ChatTokenizer, rig: TrainRig, device: torch.device) -> dict[str, Any]:
    n = args.warmup + args.steps
    shards = stream.pin_selection(dcfg)

    def new_loader() -> stream.TrainBatches:
        states = stream.start_states(None, None, 0, 1, args.num_workers, len(shards), args.seed, 0)
        return stream.make_train_loader(shards, tok, dcfg, args.batch, args.seed, states, args.num_workers)

    # The same seed gives the same stream: these are exactly the batches the streamed run sees.
    memory = [to_device(b, device) for b in itertools.islice(iter(new_loader()), n)]
    it, it2, keys = iter(new_loader()), iter(new_loader()), []
    rates = interleaved({
        "streamed": rig.step_fn(lambda i: next(it), keys),
        "memory": rig.step_fn(lambda i: memory[i]),
        "loader": lambda i: (len(to_device(next(it2), device)["keys"]), 0),
    }, args.warmup, args.steps, args.block, device)
    if device.type == "cuda":
        it3 = iter(new_loader())
        rates["streamed"].peak_mib = peak_memory(lambda: rig.step_fn(lambda i: next(it3)), args.warmup, device)
        rates["memory"].peak_mib = peak_memory(lambda: rig.step_fn(lambda i: memory[i]), args.warmup, device)
    return {**rates, "same": keys == [b["keys"] for b in memory], "batches": memory}


# -- (b) vod2chat's model vs the prototype's, forward + backward --------------------------
def bench_models(args, mcfg: ModelConfig, batches: list[dict[str, Any]], vocab: WordVocab,
                 device: torch.device) -> dict[str, Any]:
    pcfg = PrototypeConfig(vocab_size=len(vocab), d_model=mcfg.d_model, n_heads=mcfg.n_heads,
                           n_enc_layers=mcfg.n_enc_layers, n_dec_layers=mcfg.n_dec_layers, d_ff=mcfg.d_ff,
                           dropout=mcfg.dropout, max_len=args.max_message_tokens + 2, use_audio=args.proto_audio)
    # Word ids come from the prototype's own files: converting is not part of its step.
    pbatches = [prototype_batch(b, vocab, pcfg.max_len) for b in batches]

    def ours_fn() -> tuple[Step, int]:
        torch.manual_seed(0)
        model = VodChatModel(mcfg).to(device).train()

        def step(i: int) -> tuple[int, int]:
            b = batches[i]
            with autocast(device, args.mixed_precision):
                loss_sum, n_tok = token_loss(model, b)
            (loss_sum / n_tok.clamp(min=1)).backward()
            model.zero_grad(set_to_none=True)
            return len(b["keys"]), int(n_tok)
        return step, model.num_params()

    def proto_fn() -> tuple[Step, int]:
        torch.manual_seed(0)
        model = PrototypeModel(pcfg).to(device).train()

        def step(i: int) -> tuple[int, int]:
            b = pbatches[i]
            with autocast(device, args.mixed_precision):
                loss, n_tok = prototype_loss(model, b)
            loss.backward()
            model.zero_grad(set_to_none=True)
            return len(b["tokens"]), n_tok
        return step, model.num_params()

    (ours, n_ours), (proto, n_proto) = ours_fn(), proto_fn()
    rates = interleaved({"ours": ours, "proto": proto}, args.warmup, args.steps, args.block, device)
    del ours, proto
    if device.type == "cuda":
        rates["ours"].peak_mib = peak_memory(lambda: ours_fn()[0], args.warmup, device)
        rates["proto"].peak_mib = peak_memory(lambda: proto_fn()[0], args.warmup, device)
    sl = slice(args.warmup, args.warmup + args.steps)
    return {
        **rates, "ours_params": n_ours, "proto_params": n_proto,
        "ours_mem_rows": np.mean([float((b["video_mask"].sum(1) + b["audio_mask"].sum(1)).float().mean()) + 1
                                  for b in batches[sl]]),
        "ours_len": np.mean([b["tokens"].shape[1] for b in batches[sl]]),
        "proto_len": np.mean([b["tokens"].shape[1] - 1 for b in pbatches[sl]]),
        "ours_vocab": mcfg.vocab_size, "proto_vocab": len(vocab), "proto_audio": args.proto_audio,
    }


# -- (c) the loader alone at base.toml's data settings, per CPU core -----------------------
def base_data(root: Path, val_vod: str) -> Any:
    from vod2chat.config import load_config
    from vod2chat.trainer.config import Config

    return load_config(Config, REPO / "launch/base.toml", [f"data.store={root}", f"data.val_vods=[\"{val_vod}\"]",
                                                            "data.num_workers=0"])


def train_flops_per_example(m: ModelConfig, rows: float, tokens: float) -> float:
    """Matmul FLOPs of one training example (forward x 3: forward + backward): projections and
    MLPs (2 FLOPs per weight per row/token), attention scores and mixing, the vocabulary head."""
    d, ff, S, L = m.d_model, m.d_ff, rows, tokens
    enc = m.n_enc_layers * (2 * S * (4 * d * d + 2 * d * ff) + 4 * S * S * d)
    dec = m.n_dec_layers * (2 * L * (6 * d * d + 2 * d * ff) + 2 * S * 2 * d * d + 4 * L * L * d + 4 * L * S * d)
    inputs = 2 * S * d * (2048 + 128) / 2  # about half the rows are video (2048-d), half audio (128-d)
    return 3 * (enc + dec + inputs + 2 * L * d * m.vocab_size)


def bench_loader_per_core(args, root: Path, tok: ChatTokenizer, val_vod: str) -> dict[str, Any]:
    from bench.loader_reference import old_batches

    cfg = base_data(root, val_vod)
    dcfg, mb = cfg.data, cfg.train.micro_batch
    shards = stream.pin_selection(dcfg)
    urls = [Store(dcfg.store).full_url(sh.path) for sh in shards]
    new = stream.make_train_loader(shards, tok, dcfg, mb, args.seed,
                                   stream.start_states(None, None, 0, 1, 0, len(shards), args.seed, 0), 0)
    old = old_batches(urls, tok, dcfg, mb, args.seed)
    seen: list[dict[str, Any]] = []  # batches kept to measure their shapes

    def new_step(i: int) -> tuple[int, int]:
        b = next(new)
        if len(seen) < 50:
            seen.append(b)
        return len(b["keys"]), 0

    # Warm-up fills both shuffle buffers; contenders alternate every 5 batches.
    rates = interleaved({"new": new_step, "old": lambda i: (len(next(old)["keys"]), 0)},
                        dcfg.shuffle_buffer // mb + 2, args.loader_batches, 5, torch.device("cpu"))
    rows = np.mean([float((b["video_mask"].sum(1) + b["audio_mask"].sum(1)).float().mean()) + 1 for b in seen])
    toks = np.mean([float((b["tokens"] != tok.pad_id).sum(1).float().mean()) for b in seen])
    mcfg = dataclasses.replace(cfg.model, vocab_size=cfg.tokenizer.vocab_size)
    flops = train_flops_per_example(mcfg, rows, toks)
    params = VodChatModel(mcfg).num_params()
    return {"new": rates["new"], "old": rates["old"], "micro_batch": mb, "buffer": dcfg.shuffle_buffer,
            "rows": rows, "tokens": toks, "flops": flops, "params": params}


def report_loader_per_core(r: dict[str, Any], args) -> str:
    new, old = r["new"], r["old"]
    need = args.gpu_tflops * 1e12 / r["flops"]
    rows = [
        "| what | vod2chat loader | before (bench/loader_reference.py) | ratio |",
        "|---|---|---|---|",
        f"| examples per CPU-second (= per core), 1 process, no workers | {fmt(new.examples_cpu_s)} | "
        f"{fmt(old.examples_cpu_s)} | **{ratio(new.examples_cpu_s, old.examples_cpu_s)}** |",
        f"| examples per wall-second | {fmt(new.examples_s)} | {fmt(old.examples_s)} | "
        f"{ratio(new.examples_s, old.examples_s)} |",
        f"| CPU cores to feed one GPU at {args.gpu_tflops:.0f} TFLOP/s | {need / new.examples_cpu_s:.1f} | "
        f"{need / old.examples_cpu_s:.1f} | - |",
        "",
        f"base.toml data settings (micro-batch {r['micro_batch']}, shuffle buffer {r['buffer']}); one GPU's need: "
        f"base.toml's model ({r['params'] / 1e6:.1f} M parameters at vocabulary {base_vocab()}) on these batches "
        f"({r['rows']:.1f} A/V rows and {r['tokens']:.1f} tokens per example) costs {r['flops'] / 1e9:.1f} GFLOP per "
        f"training example (matmuls x 3 for forward + backward, trainer bench train_flops_per_example); at "
        f"--gpu-tflops {args.gpu_tflops:.0f} sustained (bf16 H100: ~990 peak dense, ~40% utilisation) that is "
        f"{fmt(need)} examples/s per GPU; cores per GPU = that / examples per CPU-second.",
    ]
    return "\n".join(rows)


def base_vocab() -> int:
    from vod2chat.config import load_config
    from vod2chat.trainer.config import Config

    return load_config(Config, REPO / "launch/base.toml").tokenizer.vocab_size


# -- (d) resume cost: start to first step at step 10 and at step 10,000 ---------------------
def far_checkpoint(src: Path, dst: Path, step: int, shards: list[stream.PinnedShard], tok: ChatTokenizer, dcfg: DataConfig,
                   micro_batch: int, seed: int, accum: int) -> float:
    """A copy of checkpoint `src` whose step, LR schedule and data state say `step`. The data
    state is REAL: the saved stream state run forward by bench/stream_advance.py (the same draws,
    positions and buffer as the full stream, without decoding features or tokenizing). Model and
    optimizer tensors are src's: their loading cost does not depend on the step."""
    shutil.copytree(src, dst)
    saved = checkpoint.read_json(src / checkpoint.data_file(0))
    t0 = time.perf_counter()
    meta = checkpoint.read_meta(src)
    saved["streams"] = [advance(shards, tok, dcfg, micro_batch, seed, st, (step - meta["step"]) * accum)
                        for st in saved["streams"]]
    took = time.perf_counter() - t0
    (dst / checkpoint.data_file(0)).write_text(json.dumps(saved, separators=(",", ":")))
    sched = checkpoint.load_tensors(src / "sched.pt")
    sched["last_epoch"], sched["_step_count"] = step, step + 1
    torch.save(sched, dst / "sched.pt")
    meta["step"] = step
    meta["files"] = {p.name: checkpoint.file_digest(p) for p in sorted(dst.iterdir()) if p.name != "meta.json"}
    (dst / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return took


def bench_resume(args, root: Path, tok_path: Path, val_vod: str, tmp: Path) -> dict[str, Any]:
    from vod2chat.config import load_config
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main as train_main

    def cfg(run: Path, *extra: str) -> Config:
        return load_config(Config, REPO / "launch/debug.toml", [
            f"data.store={root}", f"data.val_vods=[\"{val_vod}\"]", f"tokenizer.path={tok_path}", f"train.run_dir={run}",
            "train.progress=false", "train.num_samples=0", "train.eval_batches=1", "train.eval_every=1000000",
            "train.keep_last=100", f"data.window_s={args.window_s}", f"data.shuffle_buffer={args.shuffle_buffer}",
            f"train.micro_batch={args.batch}", f"train.global_batch={args.batch}", *extra])

    first = tmp / "first"
    c = cfg(first, "train.steps=10", "train.save_every=10")
    train_main(c)
    runs = {10: tmp / "at10", args.resume_far: tmp / "far"}
    shutil.copytree(first, runs[10], ignore=shutil.ignore_patterns("tb"))
    (runs[args.resume_far] / "checkpoints").mkdir(parents=True)
    shards = checkpoint.load_pinned(first / "checkpoints/step_0000010")
    advance_s = far_checkpoint(first / "checkpoints/step_0000010",
                               runs[args.resume_far] / f"checkpoints/step_{args.resume_far:07d}", args.resume_far,
                               shards, ChatTokenizer.load(tok_path), c.data, args.batch, args.seed, 1)
    reread = {}  # shards a resume reads before its first step: those its buffers and queues name
    for step, run in runs.items():
        st = json.loads((run / f"checkpoints/step_{step:07d}/data_rank0.json").read_text())
        reread[step] = len({r[0] for s in st["streams"] for r in s["buffer"] + s["queue"]})
    startup: dict[int, list[float]] = {k: [] for k in runs}
    for rep in range(args.resume_reps):
        for step, run in runs.items():  # alternating: load on the machine hits both alike
            shutil.rmtree(run / "tb", ignore_errors=True)
            for extra in (run / "checkpoints").glob(f"step_{step + 1:07d}"):
                shutil.rmtree(extra)
            out = train_main(cfg(run, f"train.steps={step + 1}", "train.resume=true", f"train.save_every={10**9}"))
            startup[step].append(out["train/startup_s"])
    return {"startup": startup, "advance_s": advance_s, "reread": reread}


def report_resume(r: dict[str, Any], args, loader_rate: float | None) -> str:
    near, far = (min(v) for v in r["startup"].values())
    rows = [
        "| resume at step | wall seconds from start to the first step (min of "
        f"{args.resume_reps}) | shards re-read for the stream state |",
        "|---:|---:|---:|",
        f"| 10 | {near:.2f} | {r['reread'][10]} |",
        f"| {args.resume_far:,} | {far:.2f} | {r['reread'][args.resume_far]} |",
        "",
        f"ratio {far / near:.2f}x (goal: equal within noise; the cost is the shards the saved buffers and queues "
        f"name, a few whatever the step). The step-{args.resume_far:,} checkpoint carries a real "
        f"stream state: the step-10 one run forward by bench/stream_advance.py ({r['advance_s']:.1f} s, features not decoded);"
        f" its model and optimizer tensors are step 10's.",
    ]
    if loader_rate:
        rows.append(f"Replaying the stream instead (the old islice resume) would decode and collate "
                    f"{args.resume_far * args.batch:,} examples first: about {args.resume_far * args.batch / loader_rate:,.0f} s "
                    f"at the old loader's measured {fmt(loader_rate)} examples/s.")
    return "\n".join(rows)


# -- report -------------------------------------------------------------------------------
def fmt(x: float | None, nd: int = 1) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{nd}f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def report_loader(r: dict[str, Any], args, device: torch.device) -> str:
    s, m, lo = r["streamed"], r["memory"], r["loader"]
    overhead = 1 - s.examples_s / m.examples_s
    rows = [
        "| what | vod2chat (streamed from store) | in-memory (same batches) | ratio |",
        "|---|---|---|---|",
        f"| train step examples/s (B={args.batch}, d_model={args.d_model}) | {fmt(s.examples_s)} | "
        f"{fmt(m.examples_s)} | {ratio(s.examples_s, m.examples_s)} |",
        f"| train step examples per CPU-second | {fmt(s.examples_cpu_s)} | {fmt(m.examples_cpu_s)} | "
        f"{ratio(s.examples_cpu_s, m.examples_cpu_s)} |",
    ]
    if device.type == "cuda":
        rows.append(f"| loss tokens/s | {fmt(s.tokens_s)} | {fmt(m.tokens_s)} | {ratio(s.tokens_s, m.tokens_s)} |")
        rows.append(f"| peak GPU memory MiB | {fmt(s.peak_mib)} | {fmt(m.peak_mib)} | {ratio(s.peak_mib, m.peak_mib)} |")
    rows.append(f"| loader alone examples/s (no training) | {fmt(lo.examples_s)} | - | - |")
    verdict = "OK (< 10%)" if overhead < 0.10 else "OVER the 10% budget"
    cpu_overhead = 1 - s.examples_cpu_s / m.examples_cpu_s
    rows.append("")
    rows.append(f"loader overhead: {100 * overhead:.1f}% of in-memory throughput (wall) -> {verdict}; "
                f"{100 * cpu_overhead:.1f}% by CPU time{' of the main process (workers not counted)' if args.num_workers else ''}; "
                f"identical batch order in both runs: {'yes' if r['same'] else 'NO'}; "
                f"DataLoader num_workers={args.num_workers}")
    return "\n".join(rows)


def report_models(r: dict[str, Any], args, device: torch.device) -> str:
    o, p = r["ours"], r["proto"]
    rows = [
        "| what | vod2chat | prototype | ratio (vod2chat / prototype) |",
        "|---|---|---|---|",
        f"| fwd+bwd examples/s (B={args.batch}) | {fmt(o.examples_s)} | {fmt(p.examples_s)} | "
        f"{ratio(o.examples_s, p.examples_s)} |",
        f"| fwd+bwd examples per CPU-second | {fmt(o.examples_cpu_s)} | {fmt(p.examples_cpu_s)} | "
        f"{ratio(o.examples_cpu_s, p.examples_cpu_s)} |",
        f"| predicted tokens/s | {fmt(o.tokens_s)} | {fmt(p.tokens_s)} | {ratio(o.tokens_s, p.tokens_s)} |",
    ]
    if device.type == "cuda":
        rows.append(f"| peak GPU memory MiB | {fmt(o.peak_mib)} | {fmt(p.peak_mib)} | {ratio(o.peak_mib, p.peak_mib)} |")
    rows += [
        f"| parameters | {r['ours_params']:,} | {r['proto_params']:,} | {ratio(r['ours_params'], r['proto_params'])} |",
        f"| vocabulary | {r['ours_vocab']:,} (BPE) | {r['proto_vocab']:,} (words) | "
        f"{ratio(r['ours_vocab'], r['proto_vocab'])} |",
        f"| A/V memory rows per example | {r['ours_mem_rows']:.1f} (null + frames + audio windows) | "
        f"1 (average{' of video+audio' if r['proto_audio'] else ' of video'}) | {r['ours_mem_rows']:.1f}x |",
        f"| decoder input length (padded, mean) | {r['ours_len']:.1f} (context + message) | "
        f"{r['proto_len']:.1f} (message only) | {ratio(r['ours_len'], r['proto_len'])} |",
        f"| causal decoder mask | yes | no | - |",
    ]
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    p.add_argument("--block", type=int, default=0,
                   help="contenders alternate every this many steps (0: 1 on CPU, --steps on GPU)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--enc-layers", type=int, default=2)
    p.add_argument("--dec-layers", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=0, help="0: 4 x d_model")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--window-s", type=float, default=20.0, help="data.window_s: A/V seconds before each message")
    p.add_argument("--context-messages", type=int, default=4)
    p.add_argument("--max-context-tokens", type=int, default=48)
    p.add_argument("--max-message-tokens", type=int, default=32)
    p.add_argument("--vocab-size", type=int, default=4000, help="BPE vocabulary (tokenizer.vocab_size)")
    p.add_argument("--num-workers", type=int, default=0, help="data.num_workers (DataLoader processes)")
    p.add_argument("--shuffle-buffer", type=int, default=512)
    p.add_argument("--vods", type=int, default=4)
    p.add_argument("--vod-minutes", type=float, default=20.0)
    p.add_argument("--chat-rate", type=float, default=0.5, help="messages per second of VOD")
    p.add_argument("--proto-audio", action="store_true",
                   help="let the prototype average audio into its vector too (the original had no audio)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--store", default="", help="reuse/keep the bench store here (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sections", default="abcd", help="a: data path, b: model, c: loader per core, d: resume cost")
    p.add_argument("--loader-batches", type=int, default=40, help="(c) timed batches per loader")
    p.add_argument("--gpu-tflops", type=float, default=400.0,
                   help="(c) sustained training TFLOP/s of one GPU (H100 bf16: ~990 peak dense, ~40%% utilisation)")
    p.add_argument("--resume-far", type=int, default=10_000, help="(d) the far resume step")
    p.add_argument("--resume-reps", type=int, default=2, help="(d) resumes timed per step")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from accelerate import Accelerator

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu")
    if args.mixed_precision == "fp16" and args.device != "cuda":
        raise SystemExit("--mixed-precision fp16 needs a GPU")
    tmp = tempfile.TemporaryDirectory(prefix="vod2chat-bench-") if not args.store else None
    root = Path(args.store or tmp.name) / "store"
    t0 = time.perf_counter()
    if not (root / "vods").exists():
        build_store(root, args.vods, args.vod_minutes * 60, args.chat_rate, args.seed)
    store = Store(str(root))
    summ = store.summary()["bench"]
    dcfg = DataConfig(store=str(root), val_fraction=0.0, test_fraction=0.0, window_s=args.window_s,
                      context_messages=args.context_messages, max_context_tokens=args.max_context_tokens,
                      max_message_tokens=args.max_message_tokens, shuffle_buffer=args.shuffle_buffer,
                      num_workers=args.num_workers)
    texts = list(iter_texts(dcfg, "train"))
    tok = ChatTokenizer.train(texts, args.vocab_size, 2)
    vocab = WordVocab.build(texts)
    mcfg = ModelConfig(vocab_size=tok.vocab_size, d_model=args.d_model, n_heads=args.n_heads,
                       n_enc_layers=args.enc_layers, n_dec_layers=args.dec_layers, d_ff=args.d_ff or 4 * args.d_model,
                       dropout=args.dropout, max_len=args.max_context_tokens + args.max_message_tokens + 3,
                       max_time_s=max(64.0, args.window_s))
    acc = Accelerator(cpu=args.device == "cpu", mixed_precision=args.mixed_precision)
    device = acc.device
    args.block = args.block or (1 if device.type == "cpu" else args.steps)
    print(f"# vod2chat training bench: device={device} ({torch.get_num_threads()} CPU threads)")
    print(machine_line(f"training mixed_precision={args.mixed_precision}", device=str(device)))
    print(f"store: {summ['vods']:.0f} VODs, {summ['hours'] * 60:.0f} min, {summ['segments']:.0f} segments of 30 s "
          f"(20 s look-back), {summ['messages']:.0f} messages, {summ['bytes'] / 2**20:.1f} MiB in "
          f"{summ['shards']:.0f} shards; built + tokenizers trained in {time.perf_counter() - t0:.1f}s")
    print(f"model: d_model={mcfg.d_model} heads={mcfg.n_heads} enc={mcfg.n_enc_layers} dec={mcfg.n_dec_layers} "
          f"d_ff={mcfg.d_ff}; {args.steps} timed steps each (+{args.warmup} warm-up), contenders alternating every "
          f"{args.block} step(s); load average before: {os.getloadavg()[0]:.2f}\n")

    val_vod = str(2000 + args.vods - 1)
    if "a" in args.sections or "b" in args.sections:
        t1 = time.perf_counter()
        loader = bench_loader(args, dcfg, tok, TrainRig(args, mcfg, acc), device)
        print("## (a) data path: trainer.steps.train_step fed by make_train_loader vs the same batches in memory\n")
        print(report_loader(loader, args, device))
        print(f"\n({time.perf_counter() - t1:.0f}s)\n")
    if "b" in args.sections:
        t1 = time.perf_counter()
        models = bench_models(args, mcfg, loader["batches"], vocab, device)
        print("## (b) model: forward+backward on the same examples, same width and depth\n")
        print(report_models(models, args, device))
        print(f"\n({time.perf_counter() - t1:.0f}s)")
        print("\nNotes: the prototype decodes only the message (it had no chat context) over one averaged vector, "
              "so it does less work per example by design; vod2chat's extra cost buys full temporal A/V sequences, "
              "context and a causal (valid) training objective.\n")
    old_rate = None
    if "c" in args.sections:
        t1 = time.perf_counter()
        per_core = bench_loader_per_core(args, root, tok, val_vod)
        old_rate = per_core["old"].examples_s
        print("## (c) the training loader alone, base.toml's data settings: vod2chat vs before, per core\n")
        print(report_loader_per_core(per_core, args))
        print(f"\n({time.perf_counter() - t1:.0f}s)\n")
    if "d" in args.sections:
        t1 = time.perf_counter()
        tok_path = Path(tempfile.mkdtemp(prefix="vod2chat-bench-tok-")) / "tokenizer.json"
        tok.save(tok_path)
        with tempfile.TemporaryDirectory(prefix="vod2chat-bench-resume-") as d:
            resume = bench_resume(args, root, tok_path, val_vod, Path(d))
        print("## (d) resume cost: wall seconds from entering trainer.main.main to the first step done\n")
        print(report_resume(resume, args, old_rate))
        print(f"\n({time.perf_counter() - t1:.0f}s)\n")
    print(f"total {time.perf_counter() - t0:.0f}s; load average after: {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
