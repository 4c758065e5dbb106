"""`vod2chat synth --kind events`: brief events on screen and in the audio, reaction bursts 2-8 s
later in each channel's own words, a truth file that is validated as untrusted input, and the
Bayes oracle computed from it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vod2chat.inference import oracle
from vod2chat.ingest.chat import parse_chat
from vod2chat.ingest.media import probe, read_audio, read_frames
from vod2chat.synth.events import (
    AUDIO_EVENTS,
    CHANNELS,
    DELAY_S,
    EVENT_TYPES,
    VIDEO_EVENTS,
    plan_event_stream,
    synthesize_events,
)
from vod2chat.synth.truth import find_truths, load_truth
from helpers import pair_inputs
from vod2chat.launch.cli import main as cli_main

DURATION = 40.0


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, Path, Path]:
    return synthesize_events(tmp_path_factory.mktemp("ev"), seed=5, duration=DURATION, vod_id="4242", channel="harbor")


def test_channels_share_event_types_but_not_words():
    a, b = (CHANNELS[c] for c in ("forest", "harbor"))
    assert set(a) == set(b) == {"chatter", *EVENT_TYPES}
    words_a = {t for v in a.values() for t in v}
    words_b = {t for v in b.values() for t in v}
    assert not words_a & words_b
    # within a channel, a phrase names its source
    assert sum(len(v) for v in a.values()) == len(words_a)


def test_reactions_follow_an_event_of_their_type_2_to_8_s_later():
    s = plan_event_stream(seed=1, duration=300.0, channel="forest")
    assert s.truth.events and {e.type for e in s.truth.events} == set(EVENT_TYPES)
    assert all(1.0 <= e.end - e.start <= 2.0 for e in s.truth.events)
    source = {t: k for k, v in CHANNELS["forest"].items() for t in v}
    reactions = [m for m in s.messages if source[m.text] != "chatter"]
    assert len(reactions) > 2 * len(s.truth.events)
    for m in reactions:
        assert any(e.type == source[m.text] and DELAY_S[0] - 1e-3 <= m.t - e.start <= DELAY_S[1] + 1e-3
                   for e in s.truth.events), m
    again = plan_event_stream(seed=1, duration=300.0, channel="forest")
    assert again.messages == s.messages and again.truth == s.truth
    assert plan_event_stream(seed=1, duration=300.0, channel="harbor").truth.events != s.truth.events


def test_writes_video_chat_and_truth_that_read_back(written):
    video, chat, truth_path = written
    info = probe(video)
    assert info.duration == pytest.approx(DURATION, abs=1e-6)
    stream = plan_event_stream(seed=5, duration=DURATION, channel="harbor")
    assert parse_chat(chat).messages == stream.messages
    assert load_truth(truth_path) == stream.truth
    assert find_truths(video.parent) == {"4242": truth_path}
    # the truth file is not mistaken for the chat log
    assert [Path(j.chat).name for j in pair_inputs([str(video.parent)], "harbor")] == ["4242.irc"]


def test_events_are_seen_and_heard(written):
    video, _, truth_path = written
    truth = load_truth(truth_path)
    times = np.arange(0.0, DURATION, 0.5)
    info = probe(video)
    brightness = read_frames(info, times, size=(160, 90)).reshape(len(times), -1).mean(1)
    audio = read_audio(info, 0.0, DURATION)

    def during(e, t):
        return e.start + 0.05 <= t < e.end - 0.05

    def outside(t):
        return all(not e.start - 0.2 <= t < e.end + 0.2 for e in truth.events)

    def heard_band(lo: int) -> float:
        # The energy the audio encoder can hear: VGGish's log-mel covers 125-7500 Hz only.
        spec = np.abs(np.fft.rfft(audio[lo:lo + 1600])) ** 2
        f = np.fft.rfftfreq(1600, 1 / 16000)
        return float(spec[(f >= 125) & (f <= 7500)].sum())

    calm = [b for t, b in zip(times, brightness) if outside(t)]
    calm_rms = np.sqrt(np.mean([np.mean(audio[int(t * 16000):int(t * 16000) + 1600] ** 2) for t in times if outside(t)]))
    calm_band = np.mean([heard_band(int(t * 16000)) for t in times if outside(t)])
    seen = heard = 0
    for e in truth.events:
        ts = [i for i, t in enumerate(times) if during(e, t)]
        if e.type == "flash" and ts:
            assert min(brightness[ts]) > max(calm) + 40
            seen += 1
        if e.type == "blackout" and ts:
            assert max(brightness[ts]) < min(calm) - 40
            seen += 1
        if e.type in AUDIO_EVENTS:
            lo = int((e.start + 0.05) * 16000)
            assert np.sqrt(np.mean(audio[lo:lo + 1600] ** 2)) > 5 * calm_rms
            assert heard_band(lo) > 25 * calm_band, f"a {e.type} at {e.start:.1f} s is out of the encoder's band"
            heard += 1
    assert seen and heard


def test_cli_writes_an_events_stream(tmp_path, capsys):
    assert cli_main(["synth", "--kind", "events", "--channel", "forest", "--duration", "12", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["200001.irc", "200001.mkv", "200001.synth.toml",  # its config
                                                          "200001.truth.json"]
    assert cli_main(["synth", "--kind", "events", "--channel", "nowhere", "--out", str(tmp_path)]) == 2
    assert "unknown channel" in capsys.readouterr().err


@pytest.mark.parametrize("mutate, why", [
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(duration=float("nan")), "duration"),
    (lambda d: d.update(duration=True), "duration"),
    (lambda d: d["events"].append({"start": 1.0, "end": 2.0, "type": "__import__('os')"}), "events"),
    (lambda d: d["events"].insert(0, {"start": 30.0, "end": 31.0, "type": "flash"}), "time order"),
    (lambda d: d["events"].append({"start": 5.0, "end": 1e9, "type": "flash"}), "end"),
    (lambda d: d.update(delay_s=[8.0, 2.0]), "delay_s"),
    (lambda d: d["texts"].update(flash=[]), "texts"),
    (lambda d: d["texts"].update(flash=[{"$eval": 1}]), "texts"),
    (lambda d: d.update(texts={"chatter": ["x"] * 20000}), "phrases"),
    (lambda d: d.update(chatter_per_s="1"), "chatter_per_s"),
])
def test_a_malformed_truth_file_is_an_error_naming_it(written, tmp_path, mutate, why):
    d = json.loads(written[2].read_text())
    mutate(d)
    bad = tmp_path / "9.truth.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=why) as e:
        load_truth(bad)
    assert str(bad) in str(e.value)


def test_truth_files_are_json_only(tmp_path):
    import pickle

    bad = tmp_path / "9.truth.json"
    bad.write_bytes(pickle.dumps({"version": 1}))
    with pytest.raises(ValueError, match="bad truth file"):
        load_truth(bad)


def test_expected_metrics_break_ties_at_random():
    # real tied with 4 others, 2 surely ahead: rank uniform over 3..7
    m = oracle.expected_metrics(0.1, [0.5, 0.3, 0.1, 0.1, 0.1, 0.1, 0.01])
    assert m["MR"] == pytest.approx(5.0)
    assert m["MRR"] == pytest.approx(np.mean([1 / r for r in range(3, 8)]))
    assert m["R@5"] == pytest.approx(3 / 5) and m["R@1"] == 0.0 and m["R@10"] == 1.0
    assert oracle.expected_metrics(0.9, [0.1, 0.0])["MRR"] == 1.0


def test_oracle_ranks_the_real_messages_better_than_the_channel_marginal():
    s = plan_event_stream(seed=2, duration=300.0, channel="forest")
    texts = sorted({t for v in CHANNELS["forest"].values() for t in v} | {t for v in CHANNELS["harbor"].values() for t in v})
    marg = oracle.marginal_probs(s.truth)
    assert sum(marg.values()) == pytest.approx(1.0)
    rows_o, rows_m = [], []
    for m in s.messages:
        cands = [m.text] + [t for t in texts if t != m.text]
        probs = oracle.text_probs(s.truth, m.t)
        assert sum(probs.values()) == pytest.approx(1.0) and probs[m.text] > 0
        rows_o.append(oracle.rank_candidates(probs, cands))
        rows_m.append(oracle.rank_candidates(marg, cands))
    o, mg = oracle.mean_metrics(rows_o)["MRR"], oracle.mean_metrics(rows_m)["MRR"]
    assert o > mg + 0.05, (o, mg)
    assert oracle.closed_fraction(o, mg, o) == 1.0 and oracle.closed_fraction(mg, mg, o) == 0.0


def test_eval_reports_the_oracle_next_to_the_model_on_moments_with_truth(tmp_path):
    from vod2chat.inference.evaluate import format_report, oracle_report
    from vod2chat.trainer.data import Example

    s = plan_event_stream(seed=3, duration=120.0, channel="forest")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "77.truth.json").write_text(json.dumps(s.truth.to_json()))
    texts = sorted({t for v in CHANNELS["forest"].values() for t in v})
    moments, sets = [], {}
    for i, m in enumerate(s.messages[:40]):
        key = f"forest__{'77' if i < 30 else '78'}__000000/{i}"  # VOD 78 has no truth: left out
        moments.append(Example(key, m.t, np.zeros((0, 4)), np.zeros(0), np.zeros((0, 2)), np.zeros(0), [1], 1, m.text, []))
        sets[key] = [m.text] + [t for t in texts if t != m.text]
    # a "model" that always ranks the real message first, and one that always ranks it last
    results = {"full": {"ranks_summed": [1] * 40}, "chat_only": {"ranks_summed": [len(texts)] * 40}}
    rep = oracle_report(moments, sets, results, str(tmp_path))
    assert rep["moments"] == 30
    assert rep["model"]["full"]["MRR"] == 1.0 and rep["closed_mrr"]["full"] > 1.0  # beats the oracle only by cheating
    assert rep["closed_mrr"]["chat_only"] < 0
    assert 0 < rep["marginal"]["MRR"] < rep["oracle"]["MRR"] < 1
    with pytest.raises(ValueError, match="no truth file"):
        oracle_report(moments[30:], sets, {"full": {"ranks_summed": [1] * 10}}, str(tmp_path))
    r = {"split": "test", "moments": 40, "vods": 2, "mean_candidates": 46.0, "candidates_file": "x",
         "checkpoint": "c", "ablations": {}, "oracle": rep}
    assert "gain closed" in format_report(r) and "oracle" in format_report(r)
