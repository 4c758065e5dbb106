"""The chat tokenizer: fixed special ids, emotes and names as whole tokens, exact round trips
of any text, one-file save/load, deterministic training."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vod2chat.trainer.tokenizer import SPECIAL_TOKENS, ChatTokenizer

REPO = Path(__file__).resolve().parents[1]
EMOTES = ["KEKW", "PogChamp", "LUL", "OMEGALUL", ":)", "monkaS", "Kappa", "<3"]
WORDS = "the stream is so good what was that lol no way he did it again chat is this real gg".split()
USERS = ["xqc_fan99", "Nightbot", "ecenti", "oakmrk"]
ROUND_TRIP = [
    "KEKW", "lol KEKW KEKW", "  leading and trailing  ", "tabs\tand\nnewlines\r\n", "a  b   c",
    "日本語のチャット 草", "emoji 😂👍🏽 and ZWJ 👨‍👩‍👧 family", "e\u0301 combining vs \u00e9 precomposed",
    "مرحبا RTL", "\x00 control \x7f", "literal <eos> and <pad> in chat", "@xqc_fan99: PogChamp!!!", " ", "\n",
]


def synthetic_chat(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 6))]
        for _ in range(rng.randint(0, 3)):
            words.insert(rng.randint(0, len(words)), rng.choice(EMOTES))
        if rng.random() < 0.3:
            words.insert(0, "@" + rng.choice(USERS))
        lines.append(" ".join(words))
    return lines


@pytest.fixture(scope="module")
def tok() -> ChatTokenizer:
    return ChatTokenizer.train(synthetic_chat(), vocab_size=400)


def test_special_tokens_have_fixed_ids(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id) == (0, 1, 2, 3)
    assert [tok.id_to_token(i) for i in range(4)] == list(SPECIAL_TOKENS)
    assert 4 + 256 < tok.vocab_size <= 400


@pytest.mark.parametrize("word", ["KEKW", "OMEGALUL", "PogChamp", ":)", "@xqc_fan99"])
def test_frequent_emotes_and_names_are_single_tokens(tok, word):
    ids = tok.encode(word)
    assert len(ids) == 1, [tok.id_to_token(i) for i in ids]
    # the same token at the start of a message and after other words
    assert tok.encode(f"lol {word}")[-1] == ids[0]
    assert tok.encode(f"{word} lol")[0] == ids[0]


def test_rare_words_fall_back_to_pieces(tok):
    ids = tok.encode("Zyzzyva")
    assert len(ids) > 1 and tok.decode(ids) == "Zyzzyva"


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_any_text_round_trips_exactly(tok, text):
    ids = tok.encode(text)
    assert min(ids) >= len(SPECIAL_TOKENS), "chat text must never produce a control token"
    assert tok.decode(ids) == text


def test_empty_text_and_special_tokens_in_decode(tok):
    assert tok.encode("") == [] and tok.decode([]) == ""
    ids = [tok.bos_id, *tok.encode("gg KEKW"), tok.sep_id, *tok.encode("no way"), tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "gg KEKW no way"
    assert tok.decode(ids, skip_special=False) == "<bos> gg KEKW<sep> no way<eos><pad>"


def test_save_load_is_one_json_file(tok, tmp_path):
    path = tmp_path / "run" / "tokenizer.json"
    tok.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]
    assert json.loads(path.read_text())["model"]["type"] == "BPE"
    loaded = ChatTokenizer.load(path)
    assert loaded.vocab_size == tok.vocab_size
    for text in ROUND_TRIP + synthetic_chat(50, seed=1):
        assert loaded.encode(text) == tok.encode(text)
    assert loaded.encode("<eos>") != [loaded.eos_id]  # survives reloading (not stored in the file)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        ChatTokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        ChatTokenizer.load(bad)
    # a valid tokenizers file whose special tokens are elsewhere
    from tokenizers import Tokenizer, models
    other = Tokenizer(models.BPE())
    other.add_special_tokens(["<eos>", "<pad>"])
    other.save(str(tmp_path / "other.json"))
    with pytest.raises(ValueError, match="other.json.*<pad>"):
        ChatTokenizer.load(tmp_path / "other.json")


def test_vocab_size_too_small_is_rejected():
    with pytest.raises(ValueError, match="vocab_size=100"):
        ChatTokenizer.train(["hi"], vocab_size=100)


def test_training_is_deterministic(tok, tmp_path):
    """Same chat, same file: in this process and in a fresh one (different hash seeds)."""
    again = tmp_path / "again.json"
    ChatTokenizer.train(synthetic_chat(), vocab_size=400).save(again)
    first = tmp_path / "first.json"
    tok.save(first)
    assert again.read_bytes() == first.read_bytes()
    fresh = tmp_path / "fresh.json"
    code = ("import sys; from tests.test_tokenizer import synthetic_chat; from vod2chat.trainer.tokenizer import ChatTokenizer; "
            "ChatTokenizer.train(synthetic_chat(), vocab_size=400).save(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(fresh)], cwd=REPO, check=True, env={"PYTHONHASHSEED": "123"})
    assert fresh.read_bytes() == first.read_bytes()


def test_real_chat(real_data):
    path = real_data / "chat" / "tcd_irc_569086201.txt"
    line_re = re.compile(r"^\[\d+:\d\d:\d\d\] <[^>]+> (.*)$")
    texts = [m.group(1) for m in map(line_re.match, path.read_text(encoding="utf-8").splitlines()) if m]
    assert len(texts) > 500
    tok = ChatTokenizer.train(texts, vocab_size=1500)
    assert len(tok.encode("catDance")) == 1  # the channel's most spammed emote
    ids = [tok.encode(t) for t in texts]
    assert all(tok.decode(i) == t for i, t in zip(ids, texts))
    n_bytes = sum(len(t.encode()) for t in texts)
    assert sum(map(len, ids)) < n_bytes / 2.5, "BPE should compress chat well below one token per byte"


def test_tokenizer_command_trains_on_the_train_split_of_a_store(tmp_path: Path):
    from vod2chat.launch.cli import main as cli
    from vod2chat.config import load_config
    from store_factory import make_store
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.data import iter_texts

    make_store(tmp_path / "store", vods=4, segments=2)
    out = tmp_path / "tok" / "tok.json"
    debug = REPO / "launch/debug.toml"
    assert cli(["tokenizer", "--store", str(tmp_path / "store"), "--config", str(debug), "--out", str(out),
                "data.val_vods=1003"]) == 0
    tok = ChatTokenizer.load(out)
    cfg = load_config(Config, debug, [f"data.store={tmp_path / 'store'}", "data.val_vods=1003"])
    texts = list(iter_texts(cfg.data, "train"))
    assert 0 < len(texts) < 4 * 2 * 4  # the held-out VOD's chat is not in it
    direct = ChatTokenizer.train(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
    assert [tok.id_to_token(i) for i in range(tok.vocab_size)] == [direct.id_to_token(i) for i in range(direct.vocab_size)]
    assert len(tok.encode("wow")) == 1


def test_streamer_tokens_are_special_and_only_inserted_by_id(tmp_path: Path):
    from vod2chat.trainer.config import DataConfig
    from vod2chat.trainer.data import build_tokens

    texts = synthetic_chat() + ["<streamer:forest> spelled in chat"] * 20
    tok = ChatTokenizer.train(texts, 400, 2, streamers=["harbor", "forest", "forest"])
    plain = ChatTokenizer.train(texts, 400, 2)
    ids = {tok.streamer_id("forest"), tok.streamer_id("harbor")}
    assert None not in ids and len(ids) == 2 and min(ids) >= plain.vocab_size  # BPE ids unchanged
    assert tok.streamer_id("nobody") is None and tok.streamer_id("") is None
    assert not ids & set(tok.encode("<streamer:forest> spelled in chat"))  # chat text never makes one
    tok.save(tmp_path / "tok.json")
    assert ChatTokenizer.load(tmp_path / "tok.json").streamer_id("harbor") == tok.streamer_id("harbor")

    on, off = DataConfig(streamer_token=True), DataConfig()
    prefix, n = build_tokens(["gg"], None, tok, on, "harbor")
    assert prefix[:2] == [tok.bos_id, tok.streamer_id("harbor")] and n == len(prefix)
    assert tok.decode(prefix) == "gg"  # decode skips it like the other special tokens
    assert build_tokens(["gg"], None, tok, off, "harbor")[0] == [tok.bos_id] + prefix[2:]
    # A streamer the tokenizer never saw gets no token: the same prefix as without the option.
    assert build_tokens(["gg"], None, tok, on, "nobody")[0] == [tok.bos_id] + prefix[2:]
