"""New streamers join a trained model: `train --init-from` vs training from scratch, on channels with a known truth.

    .venv/bin/python bench/newstreamer.py                    # the size measured here (docs/operations.md "New streamers")
    .venv/bin/python bench/newstreamer.py --full --seeds 0,1,2   # the full size, for a quiet machine (bench/moment.py's)

1. Synthesizes `synth --kind events` streams (synth/events.py, bench/moment.py's generator)
   for four channels: forest and harbor (old), lagoon and tundra (new: emotes the old tokenizer
   never saw); per channel `--vods` training VODs, one validation VOD and `--test-vods` test VODs
   (ids base + 950 + i) of `--val-duration` seconds, each with its truth.
2. Ingests them into one store (random-initialised encoders, 20 s look-back).
3. Trains bench/moment.py's `moment` variant (launch/demo_train.toml's model, window 8 s) on the
   old channels for `--steps-old` steps: the starting run.
4. Then, each `--steps` steps with a checkpoint every steps / `--points` (the grid):
   (a) `--init-from` the starting run on all four channels, the new ones sampled `--new-weight`
       times as often as each old one (data.streamer_weights: the old ones are replayed), once
       per `--seeds` seed (train.seed);
   (b) from scratch on all four channels (its own tokenizer), the same step budget;
   (c) `--init-from` on the new channels only (no replay).
   Every run names the validation VODs data.val_vods and the test VODs data.test_vods (never
   trained on), and gets train.select=`--select`: with val_loss (the default) it validates twice
   per checkpoint interval and keeps its lowest-validation-loss checkpoint as the one selected
   (trainer/checkpoint.py resolve); with last the selected checkpoint is the final one.
5. Evaluates on the TEST VODs, which nothing was selected on (every moment, with the truth:
   `eval --split test --streamers ...`): each grid checkpoint of (a), (b), (c) on the new
   channels, and the selected checkpoint of every run (the starting run's is "before") on the new
   and the old channels: loss in nats per message (tokenizers differ, so not per token) and the
   gain closed, (MRR - channel marginal) / (oracle - marginal), as bench/moment.py computes it.
   Target 1: (a) reaches (b)'s selected checkpoint's gain closed on the new channels at a grid
   step <= a third of the budget; target 2: (a)'s selected checkpoint loses at most 2% of the
   starting run's gain closed on the old channels. Both are judged per seed.

Everything is reused from --out on a rerun (delete a run's directory to retrain it). Run names
carry the seed (-seed{s}, s != 0) and the select mode (-val for val_loss; none for last, the names
of the runs before the test split). Every figure printed is measured in this run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import moment  # noqa: E402  (bench/moment.py: the variant and the ingest)

REPO = Path(__file__).resolve().parents[1]
OLD, NEW = ("forest", "harbor"), ("lagoon", "tundra")
WINDOW = 8.0
FULL = {"vods": 8, "duration": 240.0, "val_duration": 120.0, "test_vods": 3, "steps_old": 1500, "steps": 1500,
        "points": 6}
LABELS = {"a": "(a) --init-from, old channels replayed", "b": "(b) from scratch, all four channels",
          "c": "(c) --init-from, new channels only"}


def vod_ids(c: int, n_train: int, n_test: int) -> dict[str, list[str]]:
    base = 300000 + 1000 * (c + 1)
    return {"train": [str(base + i) for i in range(n_train)], "val": [str(base + 900)],
            "test": [str(base + 950 + i) for i in range(n_test)]}


def synth_all(out: Path, n_train: int, n_test: int, duration: float,
              val_duration: float) -> dict[str, dict[str, list[str]]]:
    from vod2chat.synth.events import synthesize_events

    plan = {}
    for c, channel in enumerate(OLD + NEW):
        plan[channel] = ids = vod_ids(c, n_train, n_test)
        for split, vods in ids.items():
            for vod in vods:
                if not (out / "vods" / channel / f"{vod}.mkv").exists():
                    synthesize_events(out / "vods" / channel, seed=int(vod), vod_id=vod, channel=channel,
                                      duration=duration if split == "train" else val_duration)
    return plan


def held_out(plan: dict, split: str) -> list[str]:
    return [f"{c}/{v}" for c in OLD + NEW for v in plan[c][split]]


def check_reused(run: Path, test: list[str]) -> None:
    """eval reads the test split from the run's saved config: a run trained before the test split
    (same name with --select last) names no test VODs, so its test split would be empty."""
    from vod2chat.config import load_config
    from vod2chat.trainer import checkpoint
    from vod2chat.trainer.config import Config

    have = load_config(Config, checkpoint.resolve(run) / checkpoint.CONFIG_FILE).data.test_vods
    if sorted(have) != sorted(test):
        raise SystemExit(f"{run}: trained with data.test_vods={have}, this bench needs {test} (a run from before the "
                         "test split, or another --test-vods): move that run directory aside to retrain it, or use "
                         "another --out")


def train(out: Path, store: str, plan: dict, name: str, steps: int, points: int, select: str,
          overrides: list[str]) -> Path:
    """One run (reused when done): the validation VODs are what it selects on, the test VODs it never sees."""
    from accelerate.state import AcceleratorState

    from vod2chat.config import load_config
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main as train_main

    run, test = out / "runs" / name, held_out(plan, "test")
    if (run / "done.json").exists():
        check_reused(run, test)
        return run
    every = max(1, steps // points)
    choose = [f"train.eval_every={steps}", "train.select=last"] if select == "last" else [
        "train.select=val_loss", f"train.eval_every={max(1, every // 2)}"]
    cfg = load_config(Config, REPO / "launch/demo_train.toml", [
        f"data.store={store}", f"train.run_dir={run}", f"train.steps={steps}", f"data.window_s={WINDOW}",
        f"data.val_vods={json.dumps(held_out(plan, 'val'))}", f"data.test_vods={json.dumps(test)}",
        "train.progress=false", *choose, f"train.save_every={every}", "train.keep_last=1000", "train.num_samples=0",
        *moment.VARIANTS["moment"], *overrides])
    AcceleratorState._reset_state()
    t0 = time.perf_counter()
    metrics = train_main(cfg)
    (run / "done.json").write_text(json.dumps({"train_s": time.perf_counter() - t0, **metrics}))
    return run


def evaluate(out: Path, ckpt: Path, channels: tuple[str, ...]) -> dict[str, float]:
    """Loss per message and gain closed on `channels`' test VODs (every moment)."""
    from vod2chat.inference.evaluate import EvalConfig
    from vod2chat.inference.evaluate import main as eval_main

    path = ckpt / f"eval-newstreamer-test-{'-'.join(channels)}.json"  # not the val reports of older benches
    if path.exists():
        rep = json.loads(path.read_text())
    else:
        with contextlib.redirect_stdout(io.StringIO()):  # eval's own tables: the bench prints its summary
            rep = eval_main(EvalConfig(run=str(ckpt), split="test", streamers=list(channels),
                                       truth=str(out / "vods"), max_moments=0, num_diversity_samples=0,
                                       out=str(path), progress=False, ablations=["full"]))
    full = rep["ablations"]["full"]
    return {"loss_msg": full["loss"] * full["tokens"] / max(1, rep["moments"]), "closed": rep["oracle"]["closed_mrr"]["full"],
            "moments": rep["moments"]}


def grid(run: Path, steps: int, every: int) -> list[tuple[int, Path]]:
    """The save_every checkpoints and the final one: not the extra best ones train.select=val_loss keeps."""
    from vod2chat.trainer import checkpoint

    found = [(checkpoint.read_meta(c)["step"], c) for c in checkpoint.list_checkpoints(run)]
    return [(s, c) for s, c in found if s % every == 0 or s == steps]


def selected(run: Path) -> tuple[int, Path]:
    """The checkpoint eval, generate and --init-from take for the run directory."""
    from vod2chat.trainer import checkpoint

    ckpt = checkpoint.resolve(run)
    return checkpoint.read_meta(ckpt)["step"], ckpt


def first_reaching(curve: list[tuple[int, dict]], target: float) -> int | None:
    return next((s for s, m in curve if m["closed"] >= target), None)


def cell(m: dict) -> str:
    return f"{m['loss_msg']:.2f} / {m['closed']:.0%}"


def label(k: str, seed: int | None = None, step: int | None = None) -> str:
    return LABELS[k] + (f", seed {seed}" if seed is not None else "") + (f" (step {step})" if step is not None else "")


def report_new(res: dict, a: argparse.Namespace) -> list[bool]:
    """The new channels' table and target 1 per seed (whether it was met, in --seeds order)."""
    steps = [s for s, _ in res["curve"][("b", 0)]]
    print(f"\nNew channels ({', '.join(NEW)}), test VODs ({res['curve'][('b', 0)][0][1]['moments']} moments): "
          "loss in nats per message / MRR gain closed, at the checkpoint grid and the run's selected checkpoint "
          f"(--select {a.select})\n")
    print("| run | " + " | ".join(str(s) for s in steps) + " | selected |")
    print("|---|" + "---:|" * (len(steps) + 1))
    rows = [(label("a", s), ("a", s)) for s in a.seeds] + [(label("b"), ("b", 0)), (label("c"), ("c", 0))]
    for name, key in rows:
        cells = {s: cell(m) for s, m in res["curve"][key]}
        step, m = res["sel_new"][key]
        print(f"| {name} | " + " | ".join(cells.get(s, "-") for s in steps) + f" | {cell(m)} (step {step}) |")
    b_step, b = res["sel_new"][("b", 0)]
    budget = a.steps
    print(f"\nTarget 1: (b)'s selected checkpoint (step {b_step}) closes {b['closed']:.0%} of the gain on the new "
          f"channels; (a) must reach it at a grid step <= {budget // 3} (a third of {budget})")
    met = []
    for s in a.seeds:
        reach = first_reaching(res["curve"][("a", s)], b["closed"])
        met.append(reach is not None and reach <= budget // 3)
        print(f"  (a) seed {s}: reaches it at step {reach if reach is not None else 'never (within the budget)'}: "
              f"{'met' if met[-1] else 'NOT met'}")
    print(f"target 1 met in {sum(met)} of {len(met)} seeds")
    return met


def report_old(res: dict, a: argparse.Namespace) -> list[bool]:
    """The old channels' table and target 2 per seed."""
    start_step, before = res["before"]
    print(f"\nOld channels ({', '.join(OLD)}), test VODs ({before['moments']} moments): each run's selected "
          f"checkpoint (--select {a.select})\n")
    print("| model | loss (nats/message) | MRR gain closed | change of gain closed vs the starting run |")
    print("|---|---:|---:|---:|")
    print(f"| starting run (old channels only, {a.steps_old} steps) (step {start_step}) | {before['loss_msg']:.2f} | "
          f"{before['closed']:.0%} | |")
    rows = [("a", s) for s in a.seeds] + [("b", 0), ("c", 0)]
    change = {}
    for k, s in rows:
        step, m = res["sel_old"][(k, s)]
        change[(k, s)] = (m["closed"] - before["closed"]) / abs(before["closed"]) if before["closed"] else math.nan
        print(f"| {label(k, s if k == 'a' else None, step)} | {m['loss_msg']:.2f} | {m['closed']:.0%} | "
              f"{change[(k, s)]:+.1%} |")
    print("\nTarget 2: (a) loses at most 2% of the old channels' gain closed")
    met = []
    for s in a.seeds:
        lost = -change[("a", s)]
        met.append(lost <= 0.02)  # NaN (a starting run closing nothing) is not met
        print(f"  (a) seed {s}: loses {max(0.0, lost):.1%}: {'met' if met[-1] else 'NOT met'}")
    print(f"target 2 met in {sum(met)} of {len(met)} seeds")
    return met


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: distinct non-negative integers, comma-separated, e.g. 0,1,2")
    return seeds


def args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_out/newstreamer")
    p.add_argument("--vods", type=int, default=2, help="training VODs per channel")
    p.add_argument("--duration", type=float, default=120.0, help="seconds per training VOD")
    p.add_argument("--val-duration", type=float, default=60.0, help="seconds per validation and test VOD")
    p.add_argument("--test-vods", type=int, default=1, help="test VODs per channel (--full: 3)")
    p.add_argument("--steps-old", type=int, default=600, help="steps of the starting run (old channels)")
    p.add_argument("--steps", type=int, default=600, help="step budget of (a), (b) and (c)")
    p.add_argument("--points", type=int, default=6, help="checkpoints evaluated per run")
    p.add_argument("--new-weight", type=float, default=2.0, help="(a): sampling weight of each new channel (old: 1)")
    p.add_argument("--select", choices=["last", "val_loss"], default="val_loss",
                   help="train.select of every run: which checkpoint is the run's (val_loss: the lowest validation loss)")
    p.add_argument("--seeds", type=parse_seeds, default=[0], help="comma-separated train.seed values of (a), e.g. 0,1,2")
    p.add_argument("--full", action="store_true", help=f"the full size: {FULL}")
    p.add_argument("overrides", nargs="*", help="training config overrides for every run, e.g. train.lr=1e-3")
    a = p.parse_args()
    if a.full:
        for k, v in FULL.items():
            setattr(a, k, v)
        a.out = a.out if a.out != "bench_out/newstreamer" else "bench_out/newstreamer_full"
    if a.test_vods < 1:
        p.error("--test-vods must be at least 1: every evaluation runs on the test VODs")
    return a


def train_all(out: Path, store: str, plan: dict, a: argparse.Namespace) -> tuple[Path, dict[tuple[str, int], Path]]:
    """The starting run, then (a) per seed, (b) and (c); today's names with --select last."""
    tag = "" if a.select == "last" else "-val"
    mix = "{" + ", ".join(f"{c} = {a.new_weight}" for c in NEW) + "}"
    old_run = train(out, store, plan, f"old-s{a.steps_old}{tag}", a.steps_old, 1, a.select,
                    [f"data.streamers={json.dumps(list(OLD))}", *a.overrides])
    grow = ["tokenizer.grow_min_count=5"]
    mixed = "a-init-mix" + ("" if a.new_weight == 2.0 else f"-w{a.new_weight:g}")  # the default keeps older names
    runs = {("a", s): train(out, store, plan, f"{mixed}-s{a.steps}{f'-seed{s}' if s else ''}{tag}", a.steps,
                            a.points, a.select, [f"train.init_from={old_run}", f"data.streamer_weights={mix}", *grow,
                                                 f"train.seed={s}", *a.overrides])
            for s in a.seeds}
    runs[("b", 0)] = train(out, store, plan, f"b-scratch-s{a.steps}{tag}", a.steps, a.points, a.select,
                           list(a.overrides))
    runs[("c", 0)] = train(out, store, plan, f"c-init-new-s{a.steps}{tag}", a.steps, a.points, a.select,
                           [f"train.init_from={old_run}", f"data.streamers={json.dumps(list(NEW))}", *grow,
                            *a.overrides])
    return old_run, runs


def measure(out: Path, old_run: Path, runs: dict, a: argparse.Namespace) -> dict:
    every = max(1, a.steps // a.points)
    sel = {k: selected(r) for k, r in runs.items()}
    start_step, start = selected(old_run)
    return {"curve": {k: [(s, evaluate(out, c, NEW)) for s, c in grid(r, a.steps, every)] for k, r in runs.items()},
            "sel_new": {k: (s, evaluate(out, c, NEW)) for k, (s, c) in sel.items()},
            "sel_old": {k: (s, evaluate(out, c, OLD)) for k, (s, c) in sel.items()},
            "before": (start_step, evaluate(out, start, OLD))}


def main() -> None:
    a = args()
    out, t0 = Path(a.out), time.perf_counter()
    plan = synth_all(out, a.vods, a.test_vods, a.duration, a.val_duration)
    store = moment.ingest_all(out, OLD + NEW)
    print(f"synthesized and ingested in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    old_run, runs = train_all(out, store, plan, a)
    res = measure(out, old_run, runs, a)
    grown = json.loads((runs[("a", a.seeds[0])] / "init_from.json").read_text())["tokenizer"]
    from vod2chat.ingest.precision import machine_line
    from vod2chat.shards.store import Store

    print("\n" + machine_line(f"features {Store(store).precision()} (the store's), training fp32"))
    print(f"\n{a.vods} training VOD(s) of {a.duration:g} s, 1 validation and {a.test_vods} test VOD(s) of "
          f"{a.val_duration:g} s per channel; bench/moment.py's `moment` model at window {WINDOW:g} s; starting run "
          f"{a.steps_old} steps on {', '.join(OLD)}; (a) mixes each new channel at weight {a.new_weight:g} (old: 1), "
          f"seeds {', '.join(map(str, a.seeds))}; train.select={a.select}. The grown tokenizer: "
          f"+{len(grown['streamer_tokens'])} streamer tokens, +{len(grown['words'])} words "
          f"({', '.join(grown['words'][:8])}{'...' if len(grown['words']) > 8 else ''}); new chat "
          f"{grown['tokens_per_message_new_chat']['before']:.2f} -> "
          f"{grown['tokens_per_message_new_chat']['kept']:.2f} tokens per message")
    met1, met2 = report_new(res, a), report_old(res, a)
    print(f"\nboth targets met in {sum(x and y for x, y in zip(met1, met2))} of {len(a.seeds)} seeds")
    names = {"old": old_run, **{k if k != "a" else f"a seed {s}": r for (k, s), r in runs.items()}}
    times = {k: json.loads((r / 'done.json').read_text())['train_s'] for k, r in names.items()}
    print(f"\ntraining wall time: {', '.join(f'{k} {v:.0f} s' for k, v in times.items())}; "
          f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
