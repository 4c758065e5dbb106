"""The benchmark family (issue 20): `synth --kind events --draw N` and bench/moment.py --draws.

Draws are seeded and stay inside the documented ranges; draw 0 is the fixed generator bit for
bit; a drawn stream's truth file says exactly what was synthesized (the oracle reads it); and a
model trained on one small draw beats its own A/V-shuffled ablation.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vod2chat.inference import oracle
from vod2chat.launch.cli import main as cli_main
from vod2chat.synth.events import (
    AUDIO_EVENTS,
    EventStream,
    CHANNEL_ORDER,
    CHANNELS,
    DRAW0,
    DRAW_RANGES,
    VIDEO_EVENTS,
    channel_texts,
    draw_params,
    plan_event_stream,
    render_event_audio,
    render_event_frame,
    synthesize_events,
)
from helpers import cfg_for
from store_factory import make_store
from vod2chat.synth.scenes import AUDIO_RATE
from vod2chat.synth.truth import Event, Truth, load_truth
from vod2chat.trainer import checkpoint
from vod2chat.trainer.main import main as train_main

REPO = Path(__file__).resolve().parents[1]
DRAWS = range(1, 41)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_moment_family", REPO / "bench/moment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _inside(x: float, key: str) -> bool:
    lo, hi = DRAW_RANGES[key]
    return lo - 1e-9 <= x <= hi + 1e-9


def test_draws_are_reproducible_and_inside_the_documented_ranges():
    draws = [draw_params(d) for d in DRAWS]
    assert draws == [draw_params(d) for d in DRAWS]  # seeded: the same draw every time
    for p in draws:
        assert _inside(len(p.channels), "channels") and set(p.channels) <= set(CHANNEL_ORDER), p
        assert _inside(p.vod_s, "vod_s") and p.vod_s % 10 == 0, p
        assert _inside(p.event_s[0], "event_s.min") and _inside(p.event_s[1] - p.event_s[0], "event_s.width"), p
        assert _inside(p.gap_s[0], "gap_s.min") and _inside(p.gap_s[1] - p.gap_s[0], "gap_s.width"), p
        assert _inside(len([k for k in p.kinds if k in VIDEO_EVENTS]), "video_kinds"), p
        assert _inside(len([k for k in p.kinds if k in AUDIO_EVENTS]), "audio_kinds"), p
        for c, (lo, hi) in p.delay_s.items():
            assert _inside(lo, "delay_s.min") and _inside(hi - lo, "delay_s.width"), (c, p)
        for key in ("audio_share", "reactions_per_event", "chatter_per_s", "chatter_vocab", "event_vocab", "motion",
                    "hiss", "pixel_noise"):
            assert _inside(getattr(p, key), key), (key, p)
    # Wide, not one point: the family spans its ranges and its channels differ in their delays.
    assert {len(p.channels) for p in draws} == {2, 3, 4}
    assert max(p.chatter_per_s for p in draws) > 3 * min(p.chatter_per_s for p in draws)
    assert all(len({p.delay_s[c] for c in p.channels}) == len(p.channels) for p in draws)
    assert draw_params(0) == DRAW0
    with pytest.raises(ValueError, match="draw"):
        draw_params(-1)


def _digest(seed: int, channel: str) -> str:
    s = plan_event_stream(seed, 300.0, channel)
    frame = render_event_frame(s, 37.3, (160, 90))
    audio = render_event_audio(s, 12345, 40000)
    h = hashlib.sha256(json.dumps([s.truth.to_json(), [(m.t, m.user, m.text) for m in s.messages]]).encode())
    h.update(frame.tobytes())
    h.update(audio.tobytes())
    return h.hexdigest()[:16]


def test_draw_0_is_the_fixed_generator_bit_for_bit():
    # Digests of the generator as it was before draws existed (integ 7fc486f, synth/events.py):
    # the README's figures and the existing benchmarks were measured on these streams.
    assert _digest(1, "forest") == GOLDEN["forest"]
    assert _digest(5, "harbor") == GOLDEN["harbor"]


GOLDEN = {"forest": "f50296b754c769c0", "harbor": "118d310632b7a641"}


def _small_draw() -> int:
    """The first draw with two channels and both audio and video events (the fast test's)."""
    return next(d for d in DRAWS if len(draw_params(d).channels) == 2)


@pytest.mark.parametrize("d", [3, 7, 12])
def test_a_drawn_streams_truth_matches_what_was_synthesized(d: int):
    p = draw_params(d)
    for channel in p.channels:
        s = plan_event_stream(11, 600.0, channel, p)
        t = s.truth
        assert t.delay_s == p.delay_s[channel] and t.chatter_per_s == p.chatter_per_s
        assert t.reactions_per_event == p.reactions_per_event and t.texts == channel_texts(p, channel)
        assert len(t.texts["chatter"]) == min(p.chatter_vocab, len(CHANNELS[channel]["chatter"]))
        assert t.events and {e.type for e in t.events} <= set(p.kinds)
        for e, nxt in zip(t.events, t.events[1:] + [None]):
            assert p.event_s[0] - 1e-3 <= e.end - e.start <= p.event_s[1] + 1e-3
            if nxt:
                assert p.gap_s[0] - 1e-3 <= nxt.start - e.end <= p.gap_s[1] + 1e-3
        # Every message is one the oracle gives a chance at its time: its source was active then.
        for m in s.messages:
            assert oracle.text_probs(t, m.t).get(m.text, 0.0) > 0, (channel, m)
        # And the picture and sound differ from the same stream without events exactly while the
        # truth says an event of that medium is under way (the hiss may drown a ding to the ear,
        # not to the encoder's spectrum: that is the draw's noise, not a wrong truth).
        quiet = EventStream(replace(t, events=[]), s.messages, s.seed, s.draw)
        end = min(t.duration, t.events[min(5, len(t.events) - 1)].end + 1.0)
        n = int(end * AUDIO_RATE)
        moved = np.abs(render_event_audio(s, 0, n) - render_event_audio(quiet, 0, n)) > 1e-6
        times = np.arange(n) / AUDIO_RATE
        heard = np.zeros(n, bool)
        for e in t.events:
            if e.type in AUDIO_EVENTS:
                heard |= (times >= e.start) & (times < e.end)
        assert not (moved & ~heard).any()
        for e in t.events:
            if e.type in AUDIO_EVENTS and e.end < end:
                assert moved[int(e.start * AUDIO_RATE) + 100:int(e.end * AUDIO_RATE) - 100].mean() > 0.9, e
            mid = (e.start + e.end) / 2
            if mid < end:
                shown = (render_event_frame(s, mid, (160, 90)) != render_event_frame(quiet, mid, (160, 90))).any()
                assert shown == (e.type in VIDEO_EVENTS), e
            gap = e.end + 0.3
            if gap < end:
                assert (render_event_frame(s, gap, (160, 90)) == render_event_frame(quiet, gap, (160, 90))).all()


def test_a_drawn_truth_file_round_trips_and_the_cli_takes_the_draw(tmp_path: Path):
    p = draw_params(_small_draw())
    ch = p.channels[-1]
    _, _, truth = synthesize_events(tmp_path / "a", seed=3, duration=20.0, vod_id="777", channel=ch, draw=p)
    assert load_truth(truth) == plan_event_stream(3, 20.0, ch, p).truth
    assert cli_main(["synth", "--kind", "events", "--draw", str(p.draw), "--channel", ch, "--seed", "3",
                     "--duration", "20", "--vod-id", "777", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b/777.truth.json").read_bytes() == truth.read_bytes()
    assert (tmp_path / "b/777.irc").read_bytes() == (tmp_path / "a/777.irc").read_bytes()
    # Another draw is another stream.
    other = replace(p, delay_s={c: (0.5, 2.5) for c in CHANNEL_ORDER})
    assert plan_event_stream(3, 20.0, ch, other).truth != load_truth(truth)


def test_volume_plan_gives_the_exact_minutes_and_reuses_whole_vods():
    bench = _bench()
    small, large = bench.volume_plan(1, 10, 240.0, 2), bench.volume_plan(1, 20, 240.0, 2)
    assert sum(s for _, s in small["train"]) == 600.0 and sum(s for _, s in large["train"]) == 1200.0
    assert small["train"][:2] == large["train"][:2]  # the curve's larger volume reuses the smaller's whole VODs
    ids = [v for split in large.values() for v, _ in split]
    assert len(ids) == len(set(ids))


def test_generation_scores_each_channel_by_its_own_drawn_delay_window(tmp_path: Path):
    """Family generation (bench/moment.py generation): the channels come from the draw's plan,
    and a message reacts to an event when that event started within ITS channel's delay window
    before it, not within the fixed generator's 2 to 8 s."""
    bench = _bench()
    p = draw_params(_small_draw())
    delay = {"desert": (0.5, 1.5), "neon": (9.0, 12.0)}
    events = [Event(10.0, 11.0, "flash"), Event(40.0, 41.0, "ding")]
    texts = {c: channel_texts(p, c) for c in delay}
    for c, vod in (("desert", "301"), ("neon", "401")):
        (tmp_path / "vods" / c).mkdir(parents=True)
        truth = Truth(c, 60.0, events, delay[c], 4.0, 0.5, texts[c])
        (tmp_path / "vods" / c / f"{vod}.truth.json").write_text(json.dumps(truth.to_json()))
    said = lambda t, text: {"t": t, "user": "someone", "text": text}  # noqa: E731
    run = tmp_path / "run"
    run.mkdir()
    # What `vod2chat generate` wrote, cached in the run (the benchmark reads it back as it is).
    (run / "generated-301.json").write_text(json.dumps([
        said(11.0, texts["desert"]["flash"][0]),  # 1 s after the flash: inside desert's 0.5-1.5 s
        said(11.4, texts["desert"]["flash"][-1]),
        said(15.0, texts["desert"]["flash"][0]),  # 5 s after: inside 2-8 s, outside desert's window
        said(20.0, texts["desert"]["chatter"][0])]))
    (run / "generated-401.json").write_text(json.dumps([
        said(50.0, texts["neon"]["ding"][0]),  # 10 s after the ding: inside neon's 9-12 s
        said(44.0, texts["neon"]["ding"][-1]),  # 4 s after: inside 2-8 s, outside neon's window
        said(50.0, texts["desert"]["flash"][0])]))  # the other community's words
    plan = {"desert": {"train": [], "val": [], "test": ["301"]}, "neon": {"train": [], "val": [], "test": ["401"]}}
    g = bench.generation(tmp_path, run, plan, 60.0)
    assert g["messages"] == 7
    assert (g["model"], g["model_wrong"], g["other_channel"]) == pytest.approx((3 / 7, 2 / 7, 1 / 7))
    # The oracle's share: its chance of writing some event's phrase at those same times.
    want = sum(sum(pr for x, pr in oracle.text_probs(load_truth(tmp_path / "vods" / c / f"{v}.truth.json"), t).items()
                   if x not in texts[c]["chatter"])
               for c, v, ts in (("desert", "301", (11, 11.4, 15, 20)), ("neon", "401", (50, 44, 50))) for t in ts) / 7
    assert g["oracle"] == pytest.approx(want) and 0 < want < 1
    # Per draw, then the ratio over draws (a draw whose oracle wrote no reaction has no ratio).
    gens = {(d, 15, 20.0): {"messages": 10, "model": m, "oracle": o, "model_wrong": 0.0, "other_channel": 0.0}
            for d, m, o in ((1, 0.3, 0.4), (2, 0.45, 0.5), (3, 0.2, 0.2), (4, 0.1, 0.0))}
    text = bench.family_generation_table(gens, 60.0)
    assert "| 1 | 15 | 20 s | 10 | 0.300 | 0.400 | 0.75 |" in text and "| 4 | 15 | 20 s | 10 | 0.100 | 0.000 | - |" in text
    assert "| 15 | 20 s | 3 | 0.90 | 0.75 | 1 |" in text
    assert "skipped" in bench.family_generation_table({}, 0.0)


@pytest.fixture(scope="module")
def select_runs(tmp_path_factory) -> Path:
    """A run choosing by validation loss with checkpoints at 20 and 40, and one choosing the last."""
    d = tmp_path_factory.mktemp("lastsel")
    make_store(d / "store")
    common = ("train.eval_every=20", "train.save_every=20", "train.keep_last=0", "train.num_samples=0")
    train_main(cfg_for(d / "store", d / "val", "train.steps=40", "train.select=val_loss", *common))
    train_main(cfg_for(d / "store", d / "last", "train.steps=20", *common))
    return d


def test_last_vs_selected_pairs_the_newest_checkpoint_with_the_selected_one(select_runs: Path, tmp_path: Path):
    bench = _bench()
    run = tmp_path / "run"
    shutil.copytree(select_runs / "val", run)
    newest = checkpoint.latest(run)
    meta = json.loads((newest / "meta.json").read_text())
    report = lambda step, closed: {"ablations": ["full", "av_shuffled"], "step": step,  # noqa: E731
                                   "oracle": {"closed_mrr": {"full": closed}}}
    key = (2, 15, 20.0)

    def choose(step: int) -> dict:
        # Which pass had the lowest loss is up to the run; plant each case (meta.json is not under its sha256).
        meta["best"] = {"step": step, "val_loss": 1.0}
        (newest / "meta.json").write_text(json.dumps(meta))
        return bench.last_vs_selected(tmp_path, run, 0)

    # The newest checkpoint's evaluation, as evaluate() cached it in the checkpoint's directory.
    (newest / "eval-moment.json").write_text(json.dumps(report(40, 0.5)))
    p = choose(20)
    assert (p["same"], p["step"], p["selected_step"]) == (False, 40, 20) and p["eval"] == report(40, 0.5)
    text = bench.paired_table({key: report(20, 0.75)}, {key: p})
    assert "| 2 | 15 | 20 s | 40 | 0.50 | 20 | 0.75 | +0.25 |" in text
    assert "| 15 | 20 s | 1 | +0.50 / +0.50 | +0.75 / +0.75 | +0.25 / +0.25 |" in text
    # The selected evaluation is of another checkpoint than the one selected: said, not silently paired.
    assert "eval-moment.json is of step 40" in bench.paired_table({key: report(40, 0.75)}, {key: p})
    p = choose(40)
    assert (p["same"], p["step"], p["selected_step"]) == (True, 40, 40) and "eval" not in p
    assert "| 40 | 0.60 | 40 (= last) | 0.60 | +0.00 |" in bench.paired_table({key: report(40, 0.6)}, {key: p})
    # A run without train.select=val_loss: nothing to pair, and the table says so.
    assert bench.last_vs_selected(tmp_path, select_runs / "last", 0) is None
    assert "nothing to compare" in bench.paired_table({key: report(20, 0.6)}, {key: None})


def _report(closed: float, step: int = 40) -> dict:
    mrr = lambda x: {"MRR": x}  # noqa: E731
    return {"ablations": ["full", "av_shuffled"], "step": step, "oracle": {
        "closed_mrr": {"full": closed}, "oracle": mrr(0.5), "marginal": mrr(0.3),
        "model": {"full": mrr(0.3 + 0.2 * closed), "av_shuffled": mrr(0.25)}}}


def test_family_tables_of_partial_runs_say_how_many_draws_each_figure_is_over():
    bench = _bench()
    # Draw 1 at both windows and volumes; draw 2 at 15 minutes only, window 20 only.
    results = {(1, 10, 8.0): _report(0.6), (1, 10, 20.0): _report(0.7), (1, 15, 8.0): _report(0.9),
               (1, 15, 20.0): _report(0.8), (2, 15, 20.0): _report(0.5)}
    text = bench.family_tables(results)
    assert "| 2 | " in text and "| 15 | - | 0.50 | 0.500 | 0.300 | 0.400 | 0.250 | - |" in text
    assert "| 1 | " in text and "| 15 | 0.90 | 0.80 | 0.500 | 0.300 | 0.460 | 0.250 | +0.10 |" in text
    assert "| 10 | - |" not in text  # no row for a volume a draw has no run of
    assert "| 15 | 20 s | 2 | 0.65 | 0.50 | 2 | +0.10 |" in text and "| 15 | 8 s | 1 | 0.90 | 0.90 | 1 | +0.10 |" in text
    assert "| 20 s | 0.70 (0.70; 1) | 0.65 (0.50; 2) |" in text


def test_report_prints_what_out_holds_and_trains_nothing(select_runs: Path, tmp_path: Path, capsys):
    bench = _bench()
    out = tmp_path / "family"
    run = out / "draw2" / "m15" / "runs" / "moment-w20-s40-sel"
    shutil.copytree(select_runs / "val", run)
    newest = checkpoint.latest(run)
    meta = json.loads((newest / "meta.json").read_text())
    meta["best"] = {"step": 20, "val_loss": 1.0}  # which pass was lowest is up to the run: plant it
    (newest / "meta.json").write_text(json.dumps(meta))
    (run / "eval-moment.json").write_text(json.dumps(_report(0.75, 20)))
    (run / "done.json").write_text(json.dumps({"train_s": 1.0}))  # bench/moment.py's own mark of a finished run
    # The newest checkpoint's own evaluation: last vs selected is paired from the cache, not recomputed.
    (newest / "eval-moment.json").write_text(json.dumps(_report(0.5)))
    # Draw 3 has a run that never finished (no done.json): left out, not trained.
    (out / "draw3" / "m15" / "runs" / "moment-w20-s40-sel").mkdir(parents=True)
    argv = ["moment.py", "--draws", "3", "--minutes-per-channel", "15", "--windows", "20", "--steps", "40",
            "--tag=-sel", "--out", str(out), "--report"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", argv)
        bench.main()
    text = capsys.readouterr().out
    assert "| 15 | 20 s | 1 | 0.75 | 0.75 | 2 | - |" in text
    assert "| 2 | 15 | 20 s | 40 | 0.50 | 20 | 0.75 | +0.25 |" in text
    assert not (out / "draw1").exists() and not any((out / "draw3").rglob("*.json")), "--report wrote something"
    # Nothing finished at all: one line that says which command to run first.
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit, match="without --report first"):
        mp.setattr("sys.argv", argv[:2] + ["1"] + argv[3:])
        bench.main()


@pytest.mark.slow
def test_a_model_trained_on_one_small_draw_beats_its_av_shuffled_ablation(tmp_path: Path):
    """bench/moment.py's own steps on a small draw: 3 minutes of stream per channel and a 60 s validation VOD per channel."""
    from vod2chat.config import load_config
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main as train_main

    bench = _bench()
    p = draw_params(_small_draw())
    plan = bench.synth_all(tmp_path, 0, 0, 0.0, 0.0, draw=p, minutes=3)
    store = bench.ingest_all(tmp_path, p.channels, tmp_path / "store", plan)
    val = [f"{c}/{v}" for c in plan for v in plan[c]["val"]]
    cfg = load_config(Config, REPO / "launch/demo_train.toml", [
        f"data.store={store}", f"train.run_dir={tmp_path / 'run'}", f"data.val_vods={json.dumps(val)}",
        "data.test_vods=[]", "train.steps=400", "train.eval_every=400", "train.save_every=400", "data.window_s=8",
        "train.progress=false", "train.num_samples=0", *bench.VARIANTS["moment"]])
    out = train_main(cfg)
    assert out["val/loss"] < out["val/loss_av_shuffled"] - MARGIN, out


# Calibrated on this draw (2) with train.seed 0, 1, 2: the A/V-shuffled validation loss was 0.103,
# 0.108 and 0.060 nats per token above the model's (Intel Xeon, 2 loaded cores); half of the
# smallest is a margin a seed-to-seed swing did not cross, and a model deaf to the stream cannot.
MARGIN = 0.03
