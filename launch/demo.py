"""`make demo`: the whole chain on the embedded default, on CPU, in minutes.

synthesize streams -> ingest them on a local Ray into a local store -> train -> evaluate on a
held-out VOD -> generate chat for it (JSON, irc, .ass subtitles, HTML replay).
The encoders are random-initialised (no weights can be downloaded here): the store records
that, and the synthetic streams are built so that even random features tell scenes apart.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from vod2chat.config import load_config, param, replaced, save_config

REPO = Path(__file__).resolve().parents[1]
STREAMER = "synth"


@dataclass
class DemoConfig:
    """`vod2chat demo` (`make demo`); launch/demo_debug.toml is the quick variant the tests run."""
    out: str = param("demo_out", "where the videos, the store, the run and the outputs go")
    quick: bool = param(False, "3 streams of 40 s and 20 steps instead of 8 of 5 min and 1500 (tests)")
    train_config: str = param("demo_train.toml", "the training config, under launch/ or a path")
    # Float sums depend on how work is split over threads: a fixed count (and deterministic kernels)
    # makes the numbers a function of the CPU kind and the encoders' precision, the same on every run.
    threads: int = param(2, "torch threads for training, evaluation and generation (fixed: reproducible numbers)", ge=1)


def synth_vods(out: Path, n: int, duration: float) -> list[str]:
    from vod2chat.synth.scenes import synthesize

    ids = []
    for i in range(n):
        vid = f"{100001 + i}"
        if not (out / f"{vid}.mkv").exists():
            synthesize(out, seed=i, duration=duration, vod_id=vid)
        ids.append(vid)
    return ids


@contextlib.contextmanager
def reproducible(threads: int) -> Iterator[None]:
    """A fixed torch thread count and deterministic kernels: the same numbers on every run on a
    CPU kind at a precision. The process (tests) gets its settings back afterwards."""
    import torch

    before, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(deterministic)


def main(cfg: DemoConfig) -> int:
    with reproducible(cfg.threads):
        return run(cfg)


def run(cfg: DemoConfig) -> int:
    from vod2chat.ingest.config import IngestConfig
    from vod2chat.ingest.driver import main as ingest_main
    from vod2chat.ingest.precision import machine_line
    from vod2chat.launch.tables import store_table
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main as train_main

    t0 = time.perf_counter()
    out, quick = Path(cfg.out), cfg.quick
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo.toml")
    n, duration = (3, 40.0) if quick else (8, 300.0)
    print(f"[1/5] synthesizing {n} streams of {duration:.0f} s in {out / 'vods'}")
    ids = synth_vods(out / "vods", n, duration)
    val_vod, test_vod = ids[-2], ids[-1]

    print("[2/5] ingesting on a local Ray (random-initialised encoders, recorded in the store)")
    icfg = load_config(IngestConfig, REPO / "launch/ingest_debug.toml",
                       [f"store={out / 'store'}", f"streamer={STREAMER}", "replace=true",  # the demo owns its store
                        f"progress={str(not quick).lower()}"])
    icfg = replaced(icfg, {"inputs": [str(out / "vods")]})
    summary = ingest_main(icfg)
    print(summary.table())
    print(store_table(icfg.store))
    if summary.failed:
        return 1
    print(f"[3/5] training on CPU with {cfg.threads} threads (a fresh run: the store and the videos are reused; "
          "the same numbers on every run on this CPU kind at this precision)")
    shutil.rmtree(out / "run", ignore_errors=True)  # else the run would resume, already finished
    steps = 20 if quick else 1500
    train_toml = REPO / "launch" / cfg.train_config if not Path(cfg.train_config).is_file() else cfg.train_config
    tcfg = load_config(Config, train_toml, [
        f"data.store={out / 'store'}", f"train.run_dir={out / 'run'}", f"train.steps={steps}",
        f'data.val_vods=["{val_vod}"]', f'data.test_vods=["{test_vod}"]', f"train.progress={str(not quick).lower()}",
        f"train.eval_every={max(10, steps // 4)}", f"train.save_every={max(10, steps // 4)}"])
    # What the numbers depend on besides the code: the CPU kind and the precision computed in.
    where = machine_line(f"encoders {summary.precision}, training mixed_precision={tcfg.train.mixed_precision}")
    print(where)
    metrics = train_main(tcfg)
    print(f"validation loss {metrics['val/loss']:.3f} (A/V shuffled across examples: "
          f"{metrics['val/loss_av_shuffled']:.3f})")

    print("[4/5] evaluating on the held-out VOD")
    from vod2chat.inference.evaluate import EvalConfig
    from vod2chat.inference.evaluate import main as eval_main

    ecfg = EvalConfig(run=str(out / "run"), split="test", max_moments=60 if quick else 0)  # 0: every test moment
    report = eval_main(ecfg)
    full, shuffled = (report["ablations"][k]["summed"] for k in ("full", "av_shuffled"))
    print(f"Recall@1 {full['R@1']:.3f} with the stream vs {shuffled['R@1']:.3f} with video and audio shuffled "
          f"across moments; Recall@10 {full['R@10']:.3f} vs {shuffled['R@10']:.3f}")

    print("[5/5] generating chat for the held-out VOD")
    from vod2chat.inference.generate import GenerateConfig
    from vod2chat.inference.generate import main as gen_main
    from vod2chat.ingest.config import EncoderConfig

    video = out / "vods" / f"{test_vod}.mkv"
    gcfg = GenerateConfig(run=str(out / "run"), vod=str(video), start="0", end=str(min(duration, 120.0)),
                          out=str(out / "chat.json"), irc=str(out / "chat.irc"), ass=str(out / "chat.ass"),
                          html=str(out / "replay.html"),
                          encoders=EncoderConfig(video_weights="random", audio_weights="random"))
    gen_main(gcfg)
    print(f"\ndone in {time.perf_counter() - t0:.0f} s on {where[len('machine: '):]}. Outputs:")
    for label, path in [("store", icfg.store), ("run + checkpoints", out / "run"),
                        ("tensorboard", f"tensorboard --logdir {out / 'run' / 'tb'}"),
                        ("evaluation", ecfg.out or out / "run" / "eval-test.json"), ("chat JSON", gcfg.out),
                        ("chat irc", gcfg.irc), ("subtitles", gcfg.ass), ("replay page", gcfg.html)]:
        print(f"  {label:<18} {path}")
    return 0
