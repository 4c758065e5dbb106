"""Evaluation: ranking metrics, distinct-n and TF-IDF on hand-computed cases, candidate sets
that are deterministic and reused, candidate scores equal to the training loss, and an
end-to-end eval where A/V matters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vod2chat.config import load_config
from vod2chat.shards.store import Store
from store_factory import make_store
from vod2chat.trainer.config import Config
from vod2chat.inference.evaluate import (EvalConfig, TextPool, TfidfIndex, build_candidates, candidate_tokens, candidates_id,
                              default_candidates_path, distinct_n, donors, load_candidates, main, rank_of_real,
                              ranking_metrics, score_candidates, select_moments, training_pool)
from vod2chat.trainer.batch import AV_KEYS, token_loss
from vod2chat.trainer.data import RunSplits
from vod2chat.trainer.data import collate
from vod2chat.trainer.model import VodChatModel
from vod2chat.trainer.tokenizer import ChatTokenizer

REPO = Path(__file__).resolve().parents[1]
DEBUG = REPO / "launch/debug.toml"
SPLIT = ['data.val_vods=["1003"]', 'data.test_vods=["1002"]']


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: see conftest


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("evstore") / "store"
    make_store(d, vods=8, segments=12)
    return d


def run_cfg(store: Path, run: Path, *extra: str) -> Config:
    return load_config(Config, DEBUG, [f"data.store={store}", f"train.run_dir={run}", "train.progress=false", *SPLIT,
                                       *extra])


@pytest.fixture(scope="module")
def tok() -> ChatTokenizer:
    from store_factory import WORDS
    return ChatTokenizer.train([" ".join(WORDS + ["wow"])] * 10, 300, 1)


# -- metrics -----------------------------------------------------------------------------
def test_ranks_put_the_most_likely_first_and_ties_count_against_the_real_one():
    # Real message at index 0; higher log-likelihood = better.
    moments = [[-1.0, -3.0, -0.5, -2.0],  # one candidate above it: rank 2 (ascending order would say 3)
               [-0.1, -5.0, -6.0],  # best: rank 1 (ascending: 3)
               [-4.0, -1.0, -2.0, -3.0, -0.5, -0.6]]  # worst: rank 6 (ascending, as lancopku/livebot: 1)
    ranks = [rank_of_real(s) for s in moments]
    assert ranks == [2, 1, 6]
    m = ranking_metrics(ranks)
    assert m["R@1"] == pytest.approx(1 / 3) and m["R@5"] == pytest.approx(2 / 3) and m["R@10"] == 1.0
    assert m["MR"] == pytest.approx(3.0)
    assert m["MRR"] == pytest.approx((1 / 2 + 1 + 1 / 6) / 3)
    assert rank_of_real([-1.0, -1.0, -2.0]) == 2  # a tie is not a win
    assert rank_of_real([0.0] * 5) == 5  # a model that cannot tell candidates apart ranks last
    assert rank_of_real([-3.0, -1.0, -2.0], real=2) == 2


def test_distinct_n_by_hand():
    seqs = [["a", "b", "a"], ["a", "b", "c"]]
    assert distinct_n(seqs, 1) == pytest.approx(3 / 6)  # a b c out of a b a a b c
    assert distinct_n(seqs, 2) == pytest.approx(3 / 4)  # ab ba bc out of ab ba ab bc
    assert distinct_n([["x"]], 2) == 0.0


def test_tfidf_nearest_by_hand():
    docs = ["pog pog", "red car", "blue car", "red red red apple", "nothing here"]
    idx = TfidfIndex(docs)
    s = idx.scores("red car")
    # idf(df=1) = ln(6/2)+1, idf(df=2) = ln(6/3)+1 (smoothed); rows L2-normalised.
    i1, i2 = np.log(3) + 1, np.log(2) + 1
    blue_car = i2 / np.hypot(i1, i2)
    red_apple = 3 * i2 / np.hypot(3 * i2, i1)
    np.testing.assert_allclose(s, [0, 1.0, np.sqrt(0.5) * blue_car, np.sqrt(0.5) * red_apple, 0], rtol=1e-12)
    assert idx.nearest("red car", 10) == [1, 3, 2]  # no shared word: not a neighbour at all
    assert idx.nearest("RED car", 1) == [1]
    assert idx.nearest("unknown words", 3) == []


def test_candidates_are_distinct_real_first_popular_then_tfidf_then_random():
    train = ["lol"] * 5 + ["pog"] * 4 + ["red car"] * 3 + ["blue car"] * 2 + ["xd"] * 2 + \
            [f"filler {i}" for i in range(30)]
    pool = TextPool.build(train)
    assert pool.texts[:3] == ["lol", "pog", "red car"]
    c = build_candidates("pog", ["a red car"], pool, n=10, n_popular=2, n_tfidf=2, rng=np.random.default_rng(0))
    assert c[0] == "pog" and len(c) == 10 and len(set(c)) == 10
    assert c[1:3] == ["lol", "red car"]  # the 2 most popular other than the real one
    # Nearest to "a red car": "red car" (already in), then "blue car"; nothing else shares a word.
    assert c[3] == "blue car" and all(t.startswith("filler") or t == "xd" for t in c[4:])
    assert all(t in pool.texts for t in c[1:])
    # A pool smaller than n: every distinct text once, none twice.
    small = TextPool.build(["a", "b", "b", "c"])
    c = build_candidates("b", [], small, n=100, n_popular=1, n_tfidf=5, rng=np.random.default_rng(1))
    assert sorted(c) == ["a", "b", "c"] and c[0] == "b"


def test_donors_never_give_a_moment_its_own_av():
    for n in (2, 3, 10, 101):
        d = donors(n, seed=0)
        assert sorted(d) == list(range(n)) and not (d == np.arange(n)).any()
    np.testing.assert_array_equal(donors(10, 0), donors(10, 0))


# -- candidate sets ----------------------------------------------------------------------
def test_candidate_sets_are_deterministic_and_reused(store_dir: Path, tok: ChatTokenizer, tmp_path: Path):
    data = run_cfg(store_dir, tmp_path / "r").data
    store = Store(str(store_dir))
    moments = select_moments(RunSplits(data, store), "test", tok, max_moments=10, seed=0)
    assert len(moments) == 10 and len({m.key for m in moments}) == 10
    assert [m.key for m in select_moments(RunSplits(data, store), "test", tok, 10, 0)] == [m.key for m in moments]
    ec = EvalConfig(candidates=5, n_popular=2, n_tfidf=2)
    ident = candidates_id(RunSplits(data, store), "test", ec)
    path = default_candidates_path(store, ident)
    assert path.startswith(str(store_dir / "eval" / "candidates-test-seed0-"))
    calls = []

    def pool():
        calls.append(1)
        return training_pool(RunSplits(data, store))

    first = load_candidates(moments, path, ident, pool)
    assert len(calls) == 1 and Path(path).exists()
    assert not [p for p in Path(path).parent.iterdir() if p.name.startswith(".tmp-")]
    train_texts = set(training_pool(RunSplits(data, store)).texts)
    for m in moments:
        c = first[m.key]
        assert c[0] == m.text and len(c) == len(set(c)) and set(c[1:]) <= train_texts
    # Reused: the pool is not rebuilt, and what the file says is what is used.
    saved = json.loads(Path(path).read_text())
    k = moments[0].key
    saved["moments"][k]["candidates"] = [moments[0].text, "edited in the file"]
    Path(path).write_text(json.dumps(saved))
    again = load_candidates(moments, path, ident, lambda: pytest.fail("rebuilt instead of reused"))
    assert again[k] == [moments[0].text, "edited in the file"]
    # Rebuilt from scratch: the same sets (seeded per moment, independent of which moments).
    Path(path).unlink()
    rebuilt = load_candidates(moments[3:], path, ident, pool)
    assert all(rebuilt[m.key] == first[m.key] for m in moments[3:])
    more = load_candidates(moments, path, ident, pool)  # the missing ones are added
    assert more == first
    # Another protocol is another file, never a silently different set.
    other = candidates_id(RunSplits(data, store), "test", EvalConfig(candidates=5, n_popular=2, n_tfidf=2, seed=1))
    assert default_candidates_path(store, other) != path
    with pytest.raises(ValueError, match="another selection or protocol"):
        load_candidates(moments, path, other, pool)


def test_candidate_scores_equal_the_training_loss(store_dir: Path, tok: ChatTokenizer, tmp_path: Path):
    cfg = run_cfg(store_dir, tmp_path / "r")
    cfg.model.vocab_size = tok.vocab_size
    torch.manual_seed(0)
    model = VodChatModel(cfg.model).eval()
    moments = select_moments(RunSplits(cfg.data, Store(str(store_dir))), "test", tok, 6, 0)
    batch = collate(moments, tok.pad_id)
    with torch.no_grad():
        memory, mask = model.encode(*(batch[k] for k in AV_KEYS))
        for b, e in enumerate(moments):
            cands = candidate_tokens([e.text, "blue", "red red red red wow"], tok, cfg.data)
            sums, lens = score_candidates(model, memory[b : b + 1], mask[b : b + 1], e.tokens[: e.n_prefix], cands,
                                          max_logits=2 * 300 * 8)  # forces several chunks
            one = collate([e], tok.pad_id)
            loss, n = token_loss(model, one)
            assert sums[0] == pytest.approx(-float(loss), abs=1e-4)
            assert lens[0] == int(n) and lens[1] == len(tok.encode("blue")) + 1


# -- end to end ----------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_end_to_end_av_matters(store_dir: Path, tmp_path: Path):
    from accelerate.state import AcceleratorState

    from vod2chat.trainer.main import main as train

    AcceleratorState._reset_state()
    run = tmp_path / "run"
    train(run_cfg(store_dir, run, "train.steps=300", "train.eval_every=1000", "train.num_samples=0"))
    out = tmp_path / "eval.json"
    r = main(EvalConfig(run=str(run), out=str(out), progress=False, num_diversity_samples=16))
    assert out.exists() and json.loads(out.read_text())["moments"] == r["moments"] == 48  # all of VOD 1002
    a = r["ablations"]
    assert list(a) == ["full", "av_shuffled", "audio_only", "video_only", "chat_only"]
    # The fake store's chat names the scene on screen: A/V must matter.
    assert a["full"]["summed"]["R@1"] > a["av_shuffled"]["summed"]["R@1"] + 0.1
    assert a["full"]["summed"]["MRR"] > a["av_shuffled"]["summed"]["MRR"]
    assert a["full"]["ppl"] < a["av_shuffled"]["ppl"] and a["full"]["ppl"] < a["chat_only"]["ppl"]
    assert r["mean_candidates"] == 6  # the fake chat has 6 distinct messages
    for name in a:
        for kind in ("summed", "normalized"):
            m = a[name][kind]
            assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 1 and 1 <= m["MR"] <= 6
    d = r["diversity"]
    assert 0 < d["generated"]["distinct1_words"] <= 1 and 0 < d["real"]["distinct2_tokens"] <= 1
    # Re-running ranks on the same, saved candidate sets: the same numbers.
    cand_file = Path(r["candidates_file"])
    stamp = cand_file.stat().st_mtime_ns
    r2 = main(EvalConfig(run=str(run), out=str(tmp_path / "eval2.json"), progress=False, num_diversity_samples=0,
                         ablations=["full"]))
    assert cand_file.stat().st_mtime_ns == stamp
    assert r2["ablations"]["full"] == a["full"]


def test_eval_refuses_a_store_with_other_features(store_dir: Path, tmp_path: Path):
    import shutil

    from accelerate.state import AcceleratorState

    from vod2chat.trainer.main import main as train

    AcceleratorState._reset_state()
    run = tmp_path / "run"
    train(run_cfg(store_dir, run, "train.steps=2", "train.num_samples=0"))
    other = tmp_path / "other"
    shutil.copytree(store_dir, other)
    for p in (other / "vods").rglob("*.json"):
        rec = json.loads(p.read_text())
        rec["fingerprints"]["video"]["model"] = "resnet50"
        p.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=r"(?s)resnet50.*fake"):
        main(EvalConfig(run=str(run), store=str(other), progress=False))


def flip_text_byte(store: Path, rel: str) -> None:
    """One byte of a message's text changed in place ('red' -> 'rad'...), the record untouched: the
    shard still parses, so only its checksum tells."""
    p = store / rel
    data = bytearray(p.read_bytes())
    i = data.index(b'"text":"') + len(b'"text":"') + 1
    data[i] = ord("a") if data[i] != ord("a") else ord("o")
    p.write_bytes(bytes(data))


def test_eval_verifies_shards_against_their_records(store_dir: Path, tmp_path: Path, capsys):
    """As training reads them: a shard whose bytes changed is an error naming it (exit 2), or
    with data.skip_errors=true a skip recorded in the report, for the evaluated split and for
    the training split the candidates come from."""
    import shutil

    from accelerate.state import AcceleratorState

    from vod2chat.launch.cli import main as cli
    from vod2chat.trainer.main import main as train

    store = tmp_path / "store"
    shutil.copytree(store_dir, store)
    # Candidate sets other tests cached in the shared store would spare eval reading the training split.
    shutil.rmtree(store / "eval", ignore_errors=True)
    runs = {}
    for skip in (False, True):
        AcceleratorState._reset_state()
        runs[skip] = tmp_path / f"run-{skip}"
        train(run_cfg(store, runs[skip], "train.steps=2", "train.num_samples=0", f"data.skip_errors={str(skip).lower()}"))
    test_shard, train_shard = "shards/fake/1002-00001.tar", "shards/fake/1000-00002.tar"
    flip_text_byte(store, test_shard)
    flip_text_byte(store, train_shard)
    args = ["--split", "test", "--num-diversity-samples", "0", "--ablations", "full", "--no-progress"]
    capsys.readouterr()
    assert cli(["eval", "--run", str(runs[False]), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{test_shard}: sha256" in err[0] and "does not match its VOD record" in err[0], err
    r = main(EvalConfig(run=str(runs[True]), out=str(tmp_path / "eval.json"), progress=False, num_diversity_samples=0,
                        ablations=["full"]))
    skipped = json.loads((tmp_path / "eval.json").read_text())["skipped"]
    assert len(skipped) == 2 and test_shard in skipped[0] and train_shard in skipped[1], skipped
    assert r["moments"] == 40  # VOD 1002 without the 2 segments of its skipped shard
