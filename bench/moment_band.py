"""Where does a model of bench/moment.py stand against the oracle, second by second after an event?

    .venv/bin/python bench/moment_band.py bench_out/moment/runs/moment-w20-s1500 --truth bench_out/moment/vods

For every test moment and every event that started up to 22 s before it, the probability the
model gives to "a reaction to that event's type" (summed over the channels' phrases of that
type, renormalised over every phrase of the truth files) next to the Bayes oracle's, averaged
by whole seconds since the event's start, for on-screen and audio events apart. Reactions come
2-8 s after an event's start: a model that finds the moment follows the oracle up inside that
band and back down outside it.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from vod2chat.inference import evaluate as ev
    from vod2chat.inference import oracle
    from vod2chat.ingest.precision import machine_line
    from vod2chat.shards.store import Store
    from vod2chat.synth.events import VIDEO_EVENTS
    from vod2chat.synth.truth import find_truths, load_truth
    from vod2chat.trainer import checkpoint
    from vod2chat.trainer.data import RunSplits, collate
    from vod2chat.trainer.batch import AV_KEYS, to_device

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory of bench/moment.py")
    p.add_argument("--truth", required=True, help="the directory of the VODs' .truth.json files")
    p.add_argument("--max-moments", type=int, default=0, help="test moments (0: all, as in the README)")
    a = p.parse_args()

    device = torch.device("cpu")
    model, tok, cfg, _ = checkpoint.load_run(a.run, device)
    moments = ev.select_moments(RunSplits(cfg.data), "test", tok, a.max_moments, 0)
    truths = {vod: load_truth(path) for vod, path in find_truths(a.truth).items()}
    source = {text: src for t in truths.values() for src, texts in t.texts.items() for text in texts}
    texts = sorted(source)
    cands = ev.candidate_tokens(texts, tok, cfg.data)
    acc: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    with torch.no_grad():
        for lo in range(0, len(moments), 16):
            group = moments[lo : lo + 16]
            batch = to_device(collate(group, tok.pad_id), device)
            memory, mask = model.encode(*(batch[k] for k in AV_KEYS))
            for b, e in enumerate(group):
                sums, _ = ev.score_candidates(model, memory[b : b + 1], mask[b : b + 1], e.tokens[: e.n_prefix], cands)
                p_model = np.exp(sums - np.logaddexp.reduce(sums))
                truth = truths[ev.parse_key(e.key)[1]]
                by_model, by_oracle = Counter(), Counter()
                for text, q in zip(texts, p_model):
                    by_model[source[text]] += q
                for text, q in oracle.text_probs(truth, e.t).items():
                    by_oracle[source[text]] += q
                for event in truth.events:
                    since = e.t - event.start
                    if -2 < since < 22:
                        row = acc["video" if event.type in VIDEO_EVENTS else "audio", int(np.floor(since))]
                        row[0] += 1
                        row[1] += by_model[event.type]
                        row[2] += by_oracle[event.type]
    print(machine_line(f"features {Store(cfg.data.store).precision()} (the store's), model fp32") + "\n")
    print("| s after the event's start | on screen: moments | model | oracle | audio: moments | model | oracle |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in range(-2, 22):
        cells = []
        for kind in ("video", "audio"):
            n, m, o = acc[kind, s]
            cells += [f"{n:.0f}", f"{m / max(1, n):.2f}", f"{o / max(1, n):.2f}"]
        print(f"| {s} to {s + 1} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
