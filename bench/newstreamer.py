"""New streamers join a trained model: `train --init-from` vs training from scratch, on channels with a known truth.

    .venv/bin/python bench/newstreamer.py            # the size measured here (docs/operations.md "New streamers")
    .venv/bin/python bench/newstreamer.py --full     # the full size, for a quiet machine (bench/moment.py's)

1. Synthesizes `synth --kind events` streams (synth/events.py, bench/moment.py's generator)
   for four channels: forest and harbor (old), lagoon and tundra (new: emotes the old tokenizer
   never saw); per channel `--vods` training VODs and one validation VOD, each with its truth.
2. Ingests them into one store (random-initialised encoders, 20 s look-back).
3. Trains bench/moment.py's `moment` variant (launch/demo_train.toml's model, window 8 s) on the
   old channels for `--steps-old` steps: the starting run.
4. Then, each `--steps` steps with a checkpoint every steps / `--points`:
   (a) `--init-from` the starting run on all four channels, the new ones sampled `--new-weight`
       times as often as each old one (data.streamer_weights: the old ones are replayed);
   (b) from scratch on all four channels (its own tokenizer), the same step budget;
   (c) `--init-from` on the new channels only (no replay).
5. Evaluates every checkpoint on the new channels' validation VODs (every moment, with the truth:
   `eval --streamers lagoon,tundra`), and the starting run and the final (a), (b), (c) on the old
   channels' validation VODs: loss in nats per message (tokenizers differ, so not per token) and
   the gain closed, (MRR - channel marginal) / (oracle - marginal), as bench/moment.py computes it.

Everything is reused from --out on a rerun (delete a run's directory to retrain it). Every figure
printed is measured in this run.
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
FULL = {"vods": 8, "duration": 240.0, "val_duration": 120.0, "steps_old": 1500, "steps": 1500, "points": 6}


def vod_ids(c: int, n_train: int) -> dict[str, list[str]]:
    base = 300000 + 1000 * (c + 1)
    return {"train": [str(base + i) for i in range(n_train)], "val": [str(base + 900)]}


def synth_all(out: Path, n_train: int, duration: float, val_duration: float) -> dict[str, dict[str, list[str]]]:
    from vod2chat.synth.events import synthesize_events

    plan = {}
    for c, channel in enumerate(OLD + NEW):
        plan[channel] = ids = vod_ids(c, n_train)
        for split, vods in ids.items():
            for vod in vods:
                if not (out / "vods" / channel / f"{vod}.mkv").exists():
                    synthesize_events(out / "vods" / channel, seed=int(vod), vod_id=vod, channel=channel,
                                      duration=val_duration if split == "val" else duration)
    return plan


def train(out: Path, store: str, plan: dict, name: str, steps: int, points: int, overrides: list[str]) -> Path:
    from accelerate.state import AcceleratorState

    from vod2chat.config import load_config
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main as train_main

    run = out / "runs" / name
    if (run / "done.json").exists():
        return run
    val = [f"{c}/{v}" for c in OLD + NEW for v in plan[c]["val"]]
    every = max(1, steps // points)
    cfg = load_config(Config, REPO / "launch/demo_train.toml", [
        f"data.store={store}", f"train.run_dir={run}", f"train.steps={steps}", f"data.window_s={WINDOW}",
        f"data.val_vods={json.dumps(val)}", "data.test_vods=[]", "train.progress=false", f"train.eval_every={steps}",
        f"train.save_every={every}", "train.keep_last=1000", "train.num_samples=0",
        *moment.VARIANTS["moment"], *overrides])
    AcceleratorState._reset_state()
    t0 = time.perf_counter()
    metrics = train_main(cfg)
    (run / "done.json").write_text(json.dumps({"train_s": time.perf_counter() - t0, **metrics}))
    return run


def evaluate(out: Path, ckpt: Path, channels: tuple[str, ...]) -> dict[str, float]:
    """Loss per message and gain closed on `channels`' validation VODs (every moment)."""
    from vod2chat.inference.evaluate import EvalConfig
    from vod2chat.inference.evaluate import main as eval_main

    path = ckpt / f"eval-newstreamer-{'-'.join(channels)}.json"
    if path.exists():
        rep = json.loads(path.read_text())
    else:
        with contextlib.redirect_stdout(io.StringIO()):  # eval's own tables: the bench prints its summary
            rep = eval_main(EvalConfig(run=str(ckpt), split="val", streamers=list(channels), truth=str(out / "vods"),
                                       max_moments=0, num_diversity_samples=0, out=str(path), progress=False,
                                       ablations=["full"]))
    full = rep["ablations"]["full"]
    return {"loss_msg": full["loss"] * full["tokens"] / max(1, rep["moments"]), "closed": rep["oracle"]["closed_mrr"]["full"],
            "moments": rep["moments"]}


def steps_of(run: Path) -> list[tuple[int, Path]]:
    from vod2chat.trainer import checkpoint

    return [(checkpoint.read_meta(c)["step"], c) for c in checkpoint.list_checkpoints(run)]


def first_reaching(curve: list[tuple[int, dict]], target: float) -> int | None:
    return next((s for s, m in curve if m["closed"] >= target), None)


def report(curves: dict[str, list[tuple[int, dict]]], old: dict[str, dict], a: argparse.Namespace) -> None:
    labels = {"a": "(a) --init-from, old channels replayed", "b": "(b) from scratch, all four channels",
              "c": "(c) --init-from, new channels only"}
    steps = [s for s, _ in curves["b"]]
    print(f"\nNew channels ({', '.join(NEW)}), validation VODs ({curves['b'][0][1]['moments']} moments): "
          "loss in nats per message / MRR gain closed, vs steps\n")
    print("| run | " + " | ".join(str(s) for s in steps) + " |")
    print("|---|" + "---:|" * len(steps))
    for k, curve in curves.items():
        cells = {s: f"{m['loss_msg']:.2f} / {m['closed']:.0%}" for s, m in curve}
        print(f"| {labels[k]} | " + " | ".join(cells.get(s, "-") for s in steps) + " |")
    target = curves["b"][-1][1]["closed"]
    reach = first_reaching(curves["a"], target)
    budget = steps[-1]
    print(f"\n(b)'s final gain closed on the new channels: {target:.0%} at step {budget}; (a) reaches it at step "
          f"{reach if reach is not None else 'never (within the budget)'} (target: <= {budget // 3}, a third): "
          f"{'met' if reach is not None and reach <= budget // 3 else 'NOT met'}")
    before = old["before"]
    print(f"\nOld channels ({', '.join(OLD)}), validation VODs ({before['moments']} moments): the starting run "
          f"({a.steps_old} steps) and each run's end\n")
    print("| model | loss (nats/message) | MRR gain closed | change of gain closed vs the starting run |")
    print("|---|---:|---:|---:|")
    print(f"| starting run (old channels only) | {before['loss_msg']:.2f} | {before['closed']:.0%} | |")
    for k in ("a", "b", "c"):
        m = old[k]
        rel = (m["closed"] - before["closed"]) / abs(before["closed"]) if before["closed"] else math.nan
        print(f"| {labels[k]} | {m['loss_msg']:.2f} | {m['closed']:.0%} | {rel:+.1%} |")
    lost = (before["closed"] - old["a"]["closed"]) / abs(before["closed"]) if before["closed"] else math.nan
    print(f"\n(a) loses {max(0.0, lost):.1%} of the old channels' gain closed (target: at most 2%): "
          f"{'met' if lost <= 0.02 else 'NOT met'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_out/newstreamer")
    p.add_argument("--vods", type=int, default=2, help="training VODs per channel")
    p.add_argument("--duration", type=float, default=120.0, help="seconds per training VOD")
    p.add_argument("--val-duration", type=float, default=60.0)
    p.add_argument("--steps-old", type=int, default=600, help="steps of the starting run (old channels)")
    p.add_argument("--steps", type=int, default=600, help="step budget of (a), (b) and (c)")
    p.add_argument("--points", type=int, default=6, help="checkpoints evaluated per run")
    p.add_argument("--new-weight", type=float, default=2.0, help="(a): sampling weight of each new channel (old: 1)")
    p.add_argument("--full", action="store_true", help=f"the full size: {FULL}")
    p.add_argument("overrides", nargs="*", help="training config overrides for every run, e.g. train.lr=1e-3")
    a = p.parse_args()
    if a.full:
        for k, v in FULL.items():
            setattr(a, k, v)
        a.out = a.out if a.out != "bench_out/newstreamer" else "bench_out/newstreamer_full"

    out, t0 = Path(a.out), time.perf_counter()
    plan = synth_all(out, a.vods, a.duration, a.val_duration)
    store = moment.ingest_all(out, OLD + NEW)
    print(f"synthesized and ingested in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    mix = "{" + ", ".join(f"{c} = {a.new_weight}" for c in NEW) + "}"
    old_run = train(out, store, plan, f"old-s{a.steps_old}", a.steps_old, 1,
                    [f"data.streamers={json.dumps(list(OLD))}", *a.overrides])
    grow = ["tokenizer.grow_min_count=5"]
    runs = {
        "a": train(out, store, plan, f"a-init-mix-s{a.steps}", a.steps, a.points,
                   [f"train.init_from={old_run}", f"data.streamer_weights={mix}", *grow, *a.overrides]),
        "b": train(out, store, plan, f"b-scratch-s{a.steps}", a.steps, a.points, list(a.overrides)),
        "c": train(out, store, plan, f"c-init-new-s{a.steps}", a.steps, a.points,
                   [f"train.init_from={old_run}", f"data.streamers={json.dumps(list(NEW))}", *grow, *a.overrides]),
    }
    curves = {k: [(s, evaluate(out, c, NEW)) for s, c in steps_of(run)] for k, run in runs.items()}
    old = {"before": evaluate(out, steps_of(old_run)[-1][1], OLD),
           **{k: evaluate(out, steps_of(run)[-1][1], OLD) for k, run in runs.items()}}
    grown = json.loads((runs["a"] / "init_from.json").read_text())["tokenizer"]
    from vod2chat.ingest.precision import machine_line
    from vod2chat.shards.store import Store

    print("\n" + machine_line(f"features {Store(store).precision()} (the store's), training fp32"))
    print(f"\n{a.vods} training VOD(s) of {a.duration:g} s per channel; bench/moment.py's `moment` model at window "
          f"{WINDOW:g} s; starting run {a.steps_old} steps on {', '.join(OLD)}; (a) mixes each new channel at weight "
          f"{a.new_weight:g} (old: 1). The grown tokenizer: +{len(grown['streamer_tokens'])} streamer tokens, "
          f"+{len(grown['words'])} words ({', '.join(grown['words'][:8])}{'...' if len(grown['words']) > 8 else ''}); "
          f"new chat {grown['tokens_per_message_new_chat']['before']:.2f} -> "
          f"{grown['tokens_per_message_new_chat']['kept']:.2f} tokens per message")
    report(curves, old, a)
    times = {k: json.loads((r / 'done.json').read_text())['train_s'] for k, r in {"old": old_run, **runs}.items()}
    print(f"\ntraining wall time: {', '.join(f'{k} {v:.0f} s' for k, v in times.items())}; "
          f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
