"""train.init_from: a new streamer joins a trained model. The vocabulary grows (old ids and the
old tokens' logits unchanged, new rows initialised from old ones), the new run starts fresh from
the old weights (also under torchrun with 2 gloo ranks), the starting run is untrusted input,
and generate/live write for the new streamer with its token and refuse a streamer without one."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import DEBUG, REPO, env, random_encoder_fingerprints, random_encoders, set_fingerprints
from store_factory import make_store
from vod2chat.config import load_config
from vod2chat.trainer import checkpoint
from vod2chat.trainer.config import Config
from vod2chat.trainer.initfrom import grow_model, load_model, open_source
from vod2chat.trainer.tokenizer import ChatTokenizer, grow_for

NEW_WORDS = ["zorblax", "quuxlybop", "blorpington", "snarfwich", "wibblewob", "plonkatron"]
VAL = 'data.val_vods=["fake/1003","newbie/2002"]'


def train(store: Path, run: Path, *extra: str) -> dict:
    from accelerate.state import AcceleratorState

    from vod2chat.trainer.main import main

    AcceleratorState._reset_state()
    return main(load_config(Config, DEBUG, [f"data.store={store}", f"train.run_dir={run}", "train.progress=false",
                                            "train.num_samples=0", VAL, *extra]))


@pytest.fixture(scope="module")
def lineage(tmp_path_factory) -> dict[str, Path]:
    """A store of streamer `fake` (random-encoder fingerprints, so generate runs on it), a run trained
    on it with streamer tokens, then streamer `newbie` (words the run never saw) added to the store."""
    root = tmp_path_factory.mktemp("initfrom")
    store = root / "store"
    make_store(store, vods=4, segments=4)
    set_fingerprints(store, random_encoder_fingerprints())
    train(store, root / "old", "data.streamer_token=true", "train.steps=60", "train.save_every=60",
          'data.val_vods=["1003"]')
    # The same scenes as `fake`'s VODs (same seed): only the streamer tells its words from fake's.
    make_store(store, vods=3, segments=4, streamer="newbie", words=NEW_WORDS, first_vod=2000)
    set_fingerprints(store, random_encoder_fingerprints())
    return {"root": root, "store": store, "old": root / "old"}


def new_chat() -> list[str]:
    return [f"{w} {w} wow" for w in NEW_WORDS] * 10


# -- the extension -----------------------------------------------------------------------
def test_growing_keeps_old_ids_and_old_logits_and_starts_new_rows_from_old_ones(lineage, tmp_path: Path, one_thread):
    src = open_source(lineage["old"])
    old_tok = src.tok
    tok, growth = grow_for(old_tok, ["newbie"], new_chat(), min_count=5, max_tokens=100, min_gain=0.05)
    n_old = old_tok.vocab_size
    assert growth.streamers == ["newbie"] and set(growth.words) >= set(NEW_WORDS)
    assert growth.tokens_per_message["kept"] < growth.tokens_per_message["before"]
    tok.save(tmp_path / "tok.json")
    tok = ChatTokenizer.load(tmp_path / "tok.json")  # ids survive a save and load
    assert [tok.id_to_token(i) for i in range(n_old)] == [old_tok.id_to_token(i) for i in range(n_old)]
    old_text = "red red wow"
    assert tok.encode(old_text) == old_tok.encode(old_text) and tok.streamer_id("fake") == old_tok.streamer_id("fake")
    assert all(len(tok.encode(w)) == 1 for w in NEW_WORDS)  # each new word is one token now
    assert tok.decode(tok.encode("zorblax zorblaxes KEKW!")) == "zorblax zorblaxes KEKW!"

    old = load_model(src, src.cfg.model).eval()
    grown = grow_model(old, old_tok, tok).eval()
    emb_old, emb = old.tok_emb.weight.detach(), grown.tok_emb.weight.detach()
    assert emb.shape[0] == tok.vocab_size and torch.equal(emb[:n_old], emb_old)
    assert grown.head.weight is grown.tok_emb.weight  # still tied
    # The new streamer starts where the old streamer tokens are; a new word at the mean of its old pieces.
    assert torch.allclose(emb[tok.streamer_id("newbie")], emb_old[old_tok.streamer_id("fake")])
    zid = tok.encode("zorblax")[0]
    assert torch.allclose(emb[zid], emb_old[old_tok.encode("zorblax")].mean(0), atol=1e-7)
    assert not torch.allclose(emb[zid], emb[tok.streamer_id("newbie")])

    g = torch.Generator().manual_seed(0)
    tokens = torch.tensor([[1, old_tok.streamer_id("fake"), *old_tok.encode("red red wow"), 3, *old_tok.encode("blue")]] * 2)
    cfg = src.cfg.model
    av = (torch.randn(2, 6, cfg.video_dim, generator=g), torch.rand(2, 6, generator=g) * 8, torch.ones(2, 6, dtype=torch.bool),
          torch.randn(2, 6, cfg.audio_dim, generator=g), torch.rand(2, 6, generator=g) * 8, torch.ones(2, 6, dtype=torch.bool))
    with torch.no_grad():
        before, after = old(tokens, *av), grown(tokens, *av)
    assert after.shape[-1] == tok.vocab_size
    torch.testing.assert_close(after[..., :n_old], before, rtol=0, atol=1e-5)


def test_words_that_do_not_pay_are_not_added(lineage):
    # The rule: words become tokens only when they cut the new chat's tokens per message by more
    # than min_gain; a streamer token is added regardless.
    old_tok = open_source(lineage["old"]).tok
    tok, growth = grow_for(old_tok, ["newbie"], new_chat(), min_count=5, max_tokens=100, min_gain=0.99)
    assert growth.streamers == ["newbie"] and growth.words == []
    assert tok.vocab_size == old_tok.vocab_size + 1
    assert growth.tokens_per_message["kept"] == growth.tokens_per_message["before"]


# -- a new run from the old one ------------------------------------------------------------
def test_init_from_starts_a_fresh_run_that_records_where_it_came_from(lineage, tmp_path: Path, one_thread):
    run = tmp_path / "new"
    train(lineage["store"], run, f"train.init_from={lineage['old']}", "train.steps=10", "train.save_every=10",
          "tokenizer.grow_min_count=5", "data.streamer_weights={newbie = 3.0}")
    old_ckpt = checkpoint.latest(lineage["old"])
    old_meta = checkpoint.read_meta(old_ckpt)
    meta = checkpoint.read_meta(run / "checkpoints/step_0000010")  # its own step counter, from 0
    origin = meta["init_from"]
    assert origin["run"] == str(lineage["old"].resolve()) and origin["step"] == old_meta["step"] == 60
    assert origin["model_sha256"] == old_meta["files"]["model.pt"]["sha256"]
    assert origin["tokenizer"]["new_streamers"] == ["newbie"] and origin["tokenizer"]["words"]
    assert meta["streamers"] == ["fake", "newbie"] and old_meta["streamers"] == ["fake"]
    tok = ChatTokenizer.load(run / "checkpoints/step_0000010/tokenizer.json")
    assert tok.streamers() == ["fake", "newbie"] and tok.vocab_size == origin["tokenizer"]["vocab"]
    sched = checkpoint.load_tensors(run / "checkpoints/step_0000010/sched.pt")
    assert sched["last_epoch"] == 10  # a fresh schedule, not the old run's continued
    cfg = load_config(Config, run / "config.toml")
    assert cfg.train.init_from == str(lineage["old"].resolve()) and cfg.data.streamer_token
    # The old run's feature statistics travel with its weights (not recomputed on the new store).
    old_model = checkpoint.load_tensors(old_ckpt / "model.pt")
    new_model = checkpoint.load_tensors(run / "checkpoints/step_0000010/model.pt")
    assert torch.equal(old_model["video_in.mean"], new_model["video_in.mean"])


def test_a_resumed_init_from_run_needs_only_its_own_checkpoints(lineage, tmp_path: Path, one_thread, monkeypatch):
    # A relative train.init_from is saved absolute (other nodes, another working directory).
    shutil.copytree(lineage["old"], tmp_path / "start", ignore=shutil.ignore_patterns("tb"))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "new"
    train(lineage["store"], run, "train.init_from=start", "train.steps=2", "train.save_every=2")
    assert load_config(Config, run / "config.toml").train.init_from == str(tmp_path / "start")
    origin = checkpoint.read_meta(run / "checkpoints/step_0000002")["init_from"]
    vocab = ChatTokenizer.load(run / "tokenizer.json").vocab_size
    # The starting run is gone: --resume continues from the new run's own checkpoint and vocabulary.
    shutil.rmtree(tmp_path / "start")
    train(lineage["store"], run, "train.init_from=start", "train.steps=4", "train.save_every=4", "train.resume=true")
    resumed = checkpoint.read_meta(run / "checkpoints/step_0000004")
    assert resumed["tokenizer"]["vocab_size"] == vocab and resumed["init_from"] == origin


@pytest.mark.multiprocess
def test_init_from_under_torchrun_with_two_gloo_ranks(lineage, tmp_path: Path):
    run = tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
                    str(REPO / "trainer/main.py"), "--config", str(DEBUG), f"data.store={lineage['store']}", VAL,
                    f"train.run_dir={run}", "train.steps=6", "train.save_every=6", "train.eval_every=6",
                    "train.progress=false", f"--init-from={lineage['old']}", "tokenizer.grow_min_count=5"],
                   check=True, env=env(), timeout=600, cwd=REPO)
    meta = checkpoint.read_meta(run / "checkpoints/step_0000006")
    assert meta["world_size"] == 2 and meta["init_from"]["step"] == 60
    tok = ChatTokenizer.load(run / "checkpoints/step_0000006/tokenizer.json")
    assert tok.streamers() == ["fake", "newbie"]
    weights = checkpoint.load_tensors(run / "checkpoints/step_0000006/model.pt")
    assert weights["tok_emb.weight"].shape[0] == tok.vocab_size


# -- the starting run is untrusted ------------------------------------------------------------
def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tb"))
    return checkpoint.latest(dst)


def reseal(ckpt: Path, name: str) -> None:
    """meta.json lists `name`'s new size and sha256, as an attacker who rewrites both would."""
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"][name] = checkpoint.file_digest(ckpt / name)
    (ckpt / "meta.json").write_text(json.dumps(meta))


def test_init_from_refuses_damaged_weights_and_a_corrupt_tokenizer(lineage, tmp_path: Path):
    # Altered weights (same size, one byte flipped): the sha256 in meta.json no longer matches.
    ckpt = copy_run(lineage["old"], tmp_path / "flipped")
    data = bytearray((ckpt / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (ckpt / "model.pt").write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match=r"model\.pt: sha256 differs") as e:
        open_source(tmp_path / "flipped")
    assert "\n" not in str(e.value)
    # A truncated model.pt: its size no longer matches.
    ckpt = copy_run(lineage["old"], tmp_path / "trunc")
    (ckpt / "model.pt").write_bytes((ckpt / "model.pt").read_bytes()[:1000])
    with pytest.raises(checkpoint.CheckpointError, match=r"model\.pt: .*truncated"):
        open_source(tmp_path / "trunc")
    # The run's tokenizer made corrupt, meta.json resealed to match: one line naming the file.
    ckpt = copy_run(lineage["old"], tmp_path / "badtok")
    (ckpt / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    reseal(ckpt, "tokenizer.json")
    with pytest.raises(checkpoint.CheckpointError, match=r"init_from: .*badtok.*tokenizer\.json: not a tokenizers JSON") as e:
        open_source(tmp_path / "badtok")
    assert "\n" not in str(e.value)
    # A tokenizer whose special tokens were moved: not a ChatTokenizer, named.
    ckpt = copy_run(lineage["old"], tmp_path / "moved")
    doc = json.loads((ckpt / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    vocab["<pad>"], vocab["<bos>"] = vocab["<bos>"], vocab["<pad>"]
    for t in doc["added_tokens"]:
        t["id"] = {0: 1, 1: 0}.get(t["id"], t["id"])
    (ckpt / "tokenizer.json").write_text(json.dumps(doc))
    reseal(ckpt, "tokenizer.json")
    with pytest.raises(checkpoint.CheckpointError, match=r"init_from: .*moved.*tokenizer\.json: special token"):
        open_source(tmp_path / "moved")


def test_the_train_command_refuses_altered_weights_in_one_line(lineage, tmp_path: Path):
    ckpt = copy_run(lineage["old"], tmp_path / "flipped")
    data = bytearray((ckpt / "model.pt").read_bytes())
    data[-100] ^= 0x01
    (ckpt / "model.pt").write_bytes(bytes(data))
    r = subprocess.run([sys.executable, str(REPO / "trainer/main.py"), "--config", str(DEBUG),
                        f"data.store={lineage['store']}", VAL, f"train.run_dir={tmp_path / 'new'}", "train.steps=2",
                        "train.progress=false", "--init-from", str(tmp_path / "flipped")],
                       capture_output=True, text=True, env=env(), timeout=300, cwd=REPO)
    errors = [line for line in r.stderr.splitlines() if ": error: " in line]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "init_from" in errors[0] and "model.pt: sha256 differs" in errors[0], errors[0]
    assert not list((tmp_path / "new").glob("checkpoints/step_*"))


def test_init_from_refuses_other_features_pickles_and_escaping_runs(lineage, tmp_path: Path):
    # Other encoders: the store's fingerprints differ from the run's, both are named.
    other = tmp_path / "other_store"
    make_store(other, vods=3, segments=2)
    with pytest.raises(ValueError, match=r"init_from: run .*old .*other encoders than store .*other_store.*"
                                         r"video model 'fake' in store .*other_store, '[^']*' in run .*old"):
        train(other, tmp_path / "a", f"train.init_from={lineage['old']}", 'data.val_vods=["1002"]')
    # A pickle planted as model.pt, meta.json rewritten to match: never unpickled.
    ckpt = copy_run(lineage["old"], tmp_path / "pickled")
    (ckpt / "model.pt").write_bytes(pickle.dumps({"x": os.getcwd}))
    reseal(ckpt, "model.pt")
    src = open_source(tmp_path / "pickled")
    with pytest.raises(checkpoint.CheckpointError, match="model.pt: not a readable"):
        load_model(src, src.cfg.model)
    # A checkpoint that is a symlink out of the run directory.
    escape = tmp_path / "escape"
    (escape / "checkpoints").mkdir(parents=True)
    (escape / "checkpoints/step_0000060").symlink_to(checkpoint.latest(lineage["old"]))
    with pytest.raises(checkpoint.CheckpointError, match="leads outside"):
        open_source(escape)
    # A file of the checkpoint that is a symlink out of it.
    ckpt = copy_run(lineage["old"], tmp_path / "link")
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer.json").symlink_to(checkpoint.latest(lineage["old"]) / "tokenizer.json")
    with pytest.raises(checkpoint.CheckpointError, match="tokenizer.json leads outside"):
        open_source(tmp_path / "link")
    # Garbage in config.toml: one error naming it.
    ckpt = copy_run(lineage["old"], tmp_path / "cfg")
    (ckpt / "config.toml").write_text("[model\nd_model = ")
    reseal(ckpt, "config.toml")
    with pytest.raises(checkpoint.CheckpointError, match="config.toml is not a training config"):
        open_source(tmp_path / "cfg")


# -- generate and live ------------------------------------------------------------------------
def test_generate_and_live_refuse_a_streamer_the_run_has_no_token_for(lineage, real_data: Path, tmp_path: Path):
    from vod2chat.inference.generate import GenerateConfig
    from vod2chat.inference.generate import main as generate
    from vod2chat.inference.live import Live, LiveConfig

    video = str(real_data / "video/in1.mp4")
    cfg = GenerateConfig(run=str(lineage["old"]), vod=video, out=str(tmp_path / "x.json"), streamer="newbie",
                         encoders=random_encoders(), device="cpu", rate=60)
    with pytest.raises(ValueError, match=r"--streamer newbie: run .*old has no token for it; it has fake\. .*--init-from"):
        generate(cfg)
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(ValueError, match=r"--streamer newbie: .*it has fake\."):
        Live(LiveConfig(run=str(lineage["old"]), source=video, streamer="newbie",
                        encoders=random_encoders(), device="cpu", rate=60))


def test_a_new_streamers_chat_reaches_generation(lineage, real_data: Path, tmp_path: Path, one_thread):
    from vod2chat.inference.generate import GenerateConfig
    from vod2chat.inference.generate import main as generate
    from vod2chat.trainer.sampling import SamplingConfig

    run = tmp_path / "joined"
    train(lineage["store"], run, f"train.init_from={lineage['old']}", "train.steps=80", "train.save_every=80",
          "train.eval_every=80", "tokenizer.grow_min_count=2", "data.streamer_weights={newbie = 2.0}")
    tok = ChatTokenizer.load(checkpoint.latest(run) / "tokenizer.json")
    new_ids = {tok.encode(w)[0] for w in NEW_WORDS}
    assert all(len(tok.encode(w)) == 1 for w in NEW_WORDS)
    out = {}
    for streamer in ("newbie", "fake"):
        cfg = GenerateConfig(run=str(run), vod=str(real_data / "video/in1.mp4"), start="1", end="6.5", rate=240.0,
                             out=str(tmp_path / f"{streamer}.json"), streamer=streamer, encoders=random_encoders(),
                             device="cpu", batch=4, seed=1,
                             sampling=SamplingConfig(temperature=0.5))
        out[streamer] = [m["text"] for m in generate(cfg)]
    words = lambda texts: [w for t in texts for w in t.split()]  # noqa: E731
    newbie, fake = words(out["newbie"]), words(out["fake"])
    # Its token makes the new streamer's community write its words, with their new tokens; the old
    # streamer's token its old words.
    assert sum(w in NEW_WORDS for w in newbie) > 0.5 * len(newbie), out["newbie"]
    assert sum(w in NEW_WORDS for w in fake) < 0.2 * len(fake), out["fake"]
    assert any(i in new_ids for t in out["newbie"] for i in tok.encode(t))
