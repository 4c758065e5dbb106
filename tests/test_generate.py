"""Generation: cached batched decoding equals the full recomputation, the sampling knobs do
what they say, and `generate` turns a real video into chat (JSON, irc, .ass, HTML) with the
encoders the run's store was made with, and refuses others."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vod2chat.ingest.chat import Message, parse_chat
from vod2chat.config import load_config
from store_factory import make_store
from helpers import random_encoders
from vod2chat.trainer.config import Config
from vod2chat.inference.generate import GenerateConfig, main, parse_time, poisson_times
from vod2chat.inference.moments import chat_rate, clean_text, stretches
from vod2chat.shards.schema import VodRecord
from vod2chat.trainer.model import ModelConfig, VodChatModel
from vod2chat.inference.replay import ass_text, write_ass, write_html
from helpers import recompute_decode
from vod2chat.trainer.sampling import SamplingConfig, generate, pick

REPO = Path(__file__).resolve().parents[1]
DEBUG = REPO / "launch/debug.toml"
TINY = ModelConfig(vocab_size=61, d_model=32, n_heads=4, n_enc_layers=1, n_dec_layers=2, d_ff=64, dropout=0.0,
                   max_len=48, video_dim=20, audio_dim=8, max_time_s=16.0)
EOS = 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: see conftest


def tiny_model_and_memory(B: int, seed: int = 0):
    torch.manual_seed(seed)
    model = VodChatModel(TINY).eval()
    g = torch.Generator().manual_seed(seed)
    Tv, Ta = 5, 3
    vmask = torch.arange(Tv)[None] < torch.tensor([5, 2, 0, 4][:B])[:, None]
    amask = torch.arange(Ta)[None] < torch.tensor([3, 0, 1, 2][:B])[:, None]
    with torch.no_grad():
        memory, mask = model.encode(torch.randn(B, Tv, 20, generator=g), torch.rand(B, Tv, generator=g) * 10, vmask,
                                    torch.randn(B, Ta, 8, generator=g), torch.rand(B, Ta, generator=g) * 10, amask)
    return model, memory, mask


PREFIXES = [[1, 5, 9, 3], [1, 7, 3], [1, 11, 12, 13, 14, 15, 16, 3], [1, 3]]  # ragged


# -- decoding ----------------------------------------------------------------------------
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_cached_batched_decoding_equals_recomputing_each_row_alone(penalty: float):
    """Token for token: the KV cache, batching and ragged prefixes change nothing a row gets."""
    model, memory, mask = tiny_model_and_memory(4)
    sc = SamplingConfig(temperature=0.0, max_new_tokens=12, repetition_penalty=penalty)
    cached = generate(model, PREFIXES, memory, mask, EOS, sc)
    full = [recompute_decode(model, p, memory[b : b + 1], mask[b : b + 1], EOS, sc) for b, p in enumerate(PREFIXES)]
    assert cached == full
    assert any(len(x) > 3 for x in cached)  # real sequences, not an immediate <eos>


def test_batched_rows_get_at_most_max_new_tokens():
    model, memory, mask = tiny_model_and_memory(4)
    sc = SamplingConfig(temperature=0.0, max_new_tokens=12)
    out = generate(model, PREFIXES, memory, mask, EOS, sc)
    assert all(len(x) <= 12 for x in out), [len(x) for x in out]
    for b, p in enumerate(PREFIXES):
        assert generate(model, [p], memory[b : b + 1], mask[b : b + 1], EOS, sc) == [out[b]]


def test_top_k_1_and_a_tiny_top_p_are_greedy():
    model, memory, mask = tiny_model_and_memory(4)
    greedy = generate(model, PREFIXES, memory, mask, EOS, SamplingConfig(temperature=0.0, max_new_tokens=10))
    for sc in (SamplingConfig(temperature=1.3, top_k=1, max_new_tokens=10),
               SamplingConfig(temperature=1.3, top_p=1e-6, max_new_tokens=10)):
        for seed in range(3):
            assert generate(model, PREFIXES, memory, mask, EOS, sc, gen=torch.Generator().manual_seed(seed)) == greedy
    # Real sampling differs from greedy somewhere (a random model's distribution is flat).
    sampled = generate(model, PREFIXES, memory, mask, EOS, SamplingConfig(temperature=1.0, max_new_tokens=10),
                       gen=torch.Generator().manual_seed(0))
    assert sampled != greedy


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False]])
    # As defined (CTRL): seen logits 2.0 -> 1.0, -1.0 -> -2.0; unseen unchanged.
    expected = torch.tensor([1.0, -2.0, 0.5, 3.0]).softmax(-1)
    n = 40000
    draws = pick(logits.expand(n, -1), seen.expand(n, -1), SamplingConfig(temperature=1.0, top_p=1.0, repetition_penalty=2.0),
                 torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / n
    assert torch.allclose(freq, expected, atol=0.01), (freq, expected)
    unpenalised = logits[0].softmax(-1)
    assert (freq[0] - unpenalised[0]).abs() > 0.05  # the seen token really lost mass
    # Greedy flips when the penalty pushes the seen favourite below the runner-up.
    greedy = SamplingConfig(temperature=0.0, repetition_penalty=1.2)
    assert pick(torch.tensor([[3.0, 2.9]]), torch.tensor([[True, False]]), greedy, None).item() == 1
    assert pick(torch.tensor([[-1.0, -1.1]]), torch.tensor([[True, False]]), greedy, None).item() == 1
    assert pick(torch.tensor([[3.0, 2.9]]), torch.tensor([[True, False]]), dataclasses.replace(greedy, repetition_penalty=1.0),
                None).item() == 0


# -- small pieces --------------------------------------------------------------------------
def test_times_rates_and_stretches():
    assert parse_time("1:02:05") == 3725 and parse_time("62:05") == 3725 and parse_time("90.5") == 90.5
    assert parse_time("0:07.25") == 7.25 and parse_time(12) == 12.0
    with pytest.raises(ValueError, match="bad time"):
        parse_time("1:75:00")
    t = poisson_times(10.0, 610.0, 30.0, np.random.default_rng(0))
    assert t == sorted(t) and 10 < t[0] and t[-1] <= 610 and 240 < len(t) < 360  # 300 expected
    assert poisson_times(5.0, 5.0, 30.0, np.random.default_rng(0)) == []
    parts = stretches(100, batch=8, min_len=16)
    assert len(parts) == 6 and [i for p in parts for i in p] == list(range(100))
    assert stretches(10, batch=8, min_len=16) == [range(0, 10)]
    recs = [VodRecord(streamer="s", vod_id=str(i), duration=60.0, segments=2, messages=n, fingerprints={}, shards=[])
            for i, n in enumerate((30, 10))]
    assert chat_rate(recs) == 20.0
    assert clean_text(" a\x07b\n  c\ufffd KEKW 🎉 ") == "ab c KEKW 🎉"


def test_each_message_sees_only_the_av_before_its_time():
    from vod2chat.shards.schema import Sample
    from vod2chat.trainer.config import DataConfig
    from vod2chat.inference.moments import chat_texts, clean_text
    from vod2chat.trainer.tokenizer import ChatTokenizer

    tok = ChatTokenizer.train(["red green blue loud quiet pog wow"] * 10, 300, 1)
    # A random model soon writes <eos>, other specials or control bytes; this one writes only
    # printable tokens, so every message has text to compare.
    printable = torch.tensor([i >= 4 and bool(clean_text(tok.decode([i]))) for i in range(tok.vocab_size)])

    class Printable(VodChatModel):
        def decode(self, *a, **kw):
            logits, cache = super().decode(*a, **kw)
            return logits.masked_fill(~printable, float("-inf")), cache

    torch.manual_seed(0)
    model = Printable(dataclasses.replace(TINY, vocab_size=tok.vocab_size, max_len=64)).eval()
    data = DataConfig(window_s=5.0, context_messages=2, max_context_tokens=24, max_message_tokens=8)
    rng = np.random.default_rng(0)
    meta = {"video_t0": 0.0, "fps": 1.0, "audio_t0": 0.0, "audio_hop": 0.96, "audio_win": 0.96}
    video, audio = rng.standard_normal((30, 20)).astype(np.float16), rng.standard_normal((31, 8)).astype(np.float16)
    times = [3.0, 7.5, 12.25, 20.0]
    sc = SamplingConfig(temperature=0.0, max_new_tokens=8)

    def texts(v: np.ndarray, a: np.ndarray) -> list[str]:
        s = Sample("gen__x__000000", v, a, {"context": [], "messages": []}, meta)
        return chat_texts(model, tok, data, s, times, sc, 4, torch.device("cpu"), torch.Generator())

    base = texts(video, audio)
    assert all(base) and len(set(base)) > 1
    for k, t in enumerate(times):  # everything after t replaced: message k and those before it unchanged
        v, a = video.copy(), audio.copy()
        v[np.arange(30) > t] = 9
        a[(np.arange(31) + 1) * 0.96 > t + 1e-6] = 9
        assert texts(v, a)[: k + 1] == base[: k + 1]
    assert texts(video[::-1].copy(), audio[::-1].copy()) != base  # while what is before t does matter


def test_ass_parses_back_and_keeps_messages_apart(tmp_path: Path):
    rng = np.random.default_rng(0)
    times = np.round(np.sort(rng.uniform(0, 120, 80)), 2)
    msgs = [Message(float(t), f"user{i % 7}", text) for i, (t, text) in enumerate(zip(
        times, ["KEKW", "what is he doing", "pog " * 30, "{\\an8}braces", "a:b: c"] * 16))]
    path = tmp_path / "chat.ass"
    write_ass(msgs, path)
    back = parse_chat(path)
    assert back.format == "ass" and not back.skipped
    assert [(m.user, m.text) for m in back.messages] == [(m.user, ass_text(m.text)) for m in msgs]
    assert ass_text("{\\an8} a  b") == "\uff5b\uff3can8\uff5d a b"
    assert [m.t for m in back.messages] == pytest.approx([m.t for m in msgs], abs=0.005)
    # The column never overlaps: at any moment, visible messages are stacked apart.
    events = []
    for line in path.read_text().splitlines():
        if line.startswith("Dialogue:"):
            f = line.split(",", 9)
            mv = re.search(r"\\move\((\d+),(-?\d+),\d+,(-?\d+),0,(\d+)\)", f[9])
            lines = f[9].count("\\N") + 1
            events.append((ass_seconds(f[1]), int(mv[2]), int(mv[3]), int(mv[4]) / 1000, lines))
    for probe in np.linspace(0, 130, 400):
        spans = []
        for t0, y0, y1, dur, lines in events:
            if t0 <= probe <= t0 + dur:
                y = y0 + (y1 - y0) * (probe - t0) / dur
                spans.append((y, y + lines * 29))  # line height 22 * 1.3 = 29 px
        spans.sort()
        assert all(a[1] <= b[0] + 1.5 for a, b in zip(spans, spans[1:])), f"overlap at {probe:.1f} s"


def ass_seconds(s: str) -> float:
    h, m, sec = s.split(":")
    return int(h) * 3600 + int(m) * 60 + float(sec)


def test_html_page_is_self_contained(tmp_path: Path):
    video = tmp_path / "media" / "my vod.mp4"
    video.parent.mkdir()
    video.write_bytes(b"\x00" * 1000)
    msgs = [Message(1.0, "a", "</script><b>hi</b>"), Message(0.5, "b", "first")]
    page = tmp_path / "out" / "replay.html"
    page.parent.mkdir()
    write_html(msgs, page, video, embed_max_bytes=0)
    doc = page.read_text()
    assert 'src="../media/my%20vod.mp4"' in doc
    assert "<script src" not in doc and "<link" not in doc and "http" not in doc.split("<body>")[1]
    data = json.loads(re.search(r'<script id="chat-data" type="application/json">(.*?)</script>', doc, re.S)[1])
    assert [m["text"] for m in data] == ["first", "</script><b>hi</b>"] and data[0]["t"] == 0.5
    write_html(msgs, page, video, embed_max_bytes=10_000)
    assert 'src="data:video/mp4;base64,AAAA' in page.read_text()


# -- end to end on a real video --------------------------------------------------------------
def test_generate_on_a_real_video(random_encoder_run: Path, real_data: Path, tmp_path: Path):
    video = real_data / "video/in1.mp4"  # 7.0 s, H.264 + AAC
    cfg = GenerateConfig(run=str(random_encoder_run), vod=str(video), start="0:01", end="6.5", rate=240.0,
                         out=str(tmp_path / "chat.json"), irc=str(tmp_path / "chat.irc"),
                         ass=str(tmp_path / "chat.ass"), html=str(tmp_path / "replay.html"),
                         encoders=random_encoders(), device="cpu", batch=4, seed=1)
    out = main(cfg)
    data = json.loads((tmp_path / "chat.json").read_text())
    assert data == out and 10 <= len(data) <= 40  # 22 expected at 4 per second over 5.5 s
    ts = [m["t"] for m in data]
    assert ts == sorted(ts) and 1.0 < ts[0] and ts[-1] <= 6.5
    assert all(m["text"] and m["user"] in {f"u{i}" for i in range(5)} for m in data)  # the training chat's users
    irc = parse_chat(tmp_path / "chat.irc")
    assert [(m.t, m.user, m.text) for m in irc.messages] == [(m["t"], m["user"], m["text"]) for m in data]
    ass = parse_chat(tmp_path / "chat.ass")
    # ASS has no escape for {, } and \: they come back as fullwidth look-alikes.
    assert [(m.user, m.text) for m in ass.messages] == [(m["user"], ass_text(m["text"])) for m in data]
    assert [m.t for m in ass.messages] == pytest.approx(ts, abs=0.005)
    page = (tmp_path / "replay.html").read_text()
    assert "data:video/mp4;base64," in page and json.dumps(data[0]["text"], ensure_ascii=False)[1:-1] in page
    # The same seed gives the same chat.
    assert main(dataclasses.replace(cfg, out=str(tmp_path / "again.json"), irc="", ass="", html="")) == out


def test_generate_writes_every_output_it_can_and_shows_its_progress(random_encoder_run: Path, real_data: Path,
                                                                   tmp_path: Path, capsys):
    from vod2chat.inference.generate import OutputError

    blocked = tmp_path / "chat.irc"
    blocked.mkdir()  # an output that cannot be written: a folder where the file should go
    cfg = GenerateConfig(run=str(random_encoder_run), vod=str(real_data / "video/in1.mp4"), end="3", rate=240.0,
                         out=str(tmp_path / "chat.json"), irc=str(blocked), ass=str(tmp_path / "chat.ass"),
                         html=str(tmp_path / "replay.html"), encoders=random_encoders(),
                         device="cpu", batch=4, seed=1)
    with pytest.raises(OutputError, match=r"1 of 4 output\(s\) not written .*--irc .*chat.irc: IsADirectoryError"):
        main(cfg)
    assert all((tmp_path / n).is_file() for n in ("chat.json", "chat.toml", "chat.ass", "replay.html"))
    err = capsys.readouterr().err
    assert "generate: features" in err and "generate: messages" in err  # tqdm bars on stderr


def test_generate_refuses_encoders_other_than_the_runs(random_encoder_run: Path, real_data: Path, tmp_path: Path):
    store_trained = tmp_path / "fake_run"
    # A run on the plain fake store ("fake" fingerprints): random encoders are another feature space.
    from accelerate.state import AcceleratorState

    from vod2chat.trainer.main import main as train

    make_store(tmp_path / "store", vods=3, segments=2)
    AcceleratorState._reset_state()
    train(load_config(Config, DEBUG, [f"data.store={tmp_path / 'store'}", f"train.run_dir={store_trained}",
                                      "train.progress=false", "train.steps=1", "train.num_samples=0",
                                      'data.val_vods=["1002"]']))
    cfg = GenerateConfig(run=str(store_trained), vod=str(real_data / "video/in1.mp4"), out=str(tmp_path / "x.json"),
                         encoders=random_encoders(), device="cpu", rate=60)
    with pytest.raises(ValueError, match=r"(?s)resnet50.*random.*fake.*--video-weights"):
        main(cfg)
    assert not (tmp_path / "x.json").exists()


def test_generate_checks_its_inputs_and_outputs_before_any_work(random_encoder_run: Path, real_data: Path,
                                                                 tmp_path: Path, capsys):
    from vod2chat.launch.cli import main as cli

    video = str(real_data / "video/in1.mp4")
    base = ["generate", "--config", str(REPO / "launch/generate_debug.toml"), "--run", str(random_encoder_run)]
    # A run on random-encoder features: the advice is --weights random, not downloading weights.
    assert cli(["generate", "--run", str(random_encoder_run), "--vod", video, "--out", str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err
    assert "--weights random" in err and "download" not in err.lower() and len(err.strip().splitlines()) == 1
    for flag in ("--out", "--irc", "--ass", "--html"):
        target = tmp_path / "missing" / "x.out"
        extra = [] if flag == "--out" else ["--out", str(tmp_path / "b.json")]
        assert cli([*base, "--vod", video, flag, str(target), *extra]) == 2
        err = capsys.readouterr().err
        assert f"{flag} {target}: folder {target.parent} does not exist" in err, err
        assert not (tmp_path / "b.json").exists()  # refused before the work, not after it
    assert cli([*base, "--vod", str(tmp_path / "nope.mp4")]) == 2
    assert "nope.mp4: no such video file" in capsys.readouterr().err
    # The debug variant runs as is (random encoders, CPU, greedy) and saves its config beside the chat.
    assert cli([*base, "--vod", video, "--out", str(tmp_path / "c.json"), "--end", "3"]) == 0
    assert load_config(GenerateConfig, tmp_path / "c.toml").sampling.temperature == 0.0


def test_generate_video_renders_what_it_generated(random_encoder_run: Path, real_data: Path, tmp_path: Path):
    """--video: the VOD range with the generated chat beside it (the render library), audio kept."""
    import av

    video = real_data / "video/in1.mp4"
    cfg = GenerateConfig(run=str(random_encoder_run), vod=str(video), start="1", end="4", rate=120.0,
                         out=str(tmp_path / "chat.json"), video=str(tmp_path / "chat.mp4"),
                         encoders=random_encoders(), device="cpu", batch=4, seed=1)
    out = main(cfg)
    assert out
    with av.open(str(tmp_path / "chat.mp4")) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (320 + 350, 240)
        assert c.streams.audio and c.duration / 1e6 == pytest.approx(3.0, abs=0.2)
        col = [f.to_ndarray(format="rgb24")[:, 320:] for f in c.decode(video=0)]
    assert len(col) == pytest.approx(90, abs=2)  # 3 s at 29.97 fps
    first = out[0]["t"] - 1.0  # seconds into the rendered range when the first message shows
    drawn = [int((img.astype(int).max(axis=-1) > 150).sum()) for img in col]  # text pixels in the column
    assert drawn[0] == 0 and drawn[min(len(col) - 1, int(first * 29.97) + 2)] > 20
