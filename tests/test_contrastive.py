"""The contrastive aux loss (model.contrastive_dim, model.contrastive_weight): off changes nothing,
on it is finite (bf16 too), trains the A/V encoder and the message side, the message side never
sees the A/V, it learns to pair a window with its message, and checkpoints with and without it load."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import DEBUG, REPO, VAL, cfg_for, scalars
from store_factory import make_store
from vod2chat.trainer import checkpoint
from vod2chat.trainer.batch import AV_KEYS, losses, message_mask, shuffle_av, token_loss, to_device
from vod2chat.trainer.data import make_loader
from vod2chat.trainer.main import main
from vod2chat.trainer.model import ModelConfig, VodChatModel

TINY = ModelConfig(vocab_size=61, d_model=32, n_heads=4, n_enc_layers=1, n_dec_layers=2, d_ff=64, dropout=0.0,
                   max_len=24, video_dim=20, audio_dim=8, max_time_s=16.0)
ON = ("model.contrastive_dim=32", "model.contrastive_weight=1.0")


def tiny(seed: int = 0, **kw) -> VodChatModel:
    torch.manual_seed(seed)
    return VodChatModel(dataclasses.replace(TINY, **kw))


def batch(seed: int = 0, B: int = 6, L: int = 14) -> dict[str, torch.Tensor]:
    """B examples with A/V rows and a prefix of 3 tokens, messages of different lengths; the
    last example has none (its loss mask covers only the <eos>)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([14, 10, 9, 12, 8, 4])[:B]
    pos = torch.arange(L)[None]
    return {"tokens": torch.randint(4, TINY.vocab_size, (B, L), generator=g).masked_fill(pos >= lens[:, None], 0),
         "loss_mask": (pos >= 2) & (pos < lens[:, None] - 1),
         "video": torch.randn(B, 5, TINY.video_dim, generator=g), "video_time": torch.rand(B, 5, generator=g) * 12,
         "video_mask": torch.ones(B, 5, dtype=torch.bool),
         "audio": torch.randn(B, 4, TINY.audio_dim, generator=g), "audio_time": torch.rand(B, 4, generator=g) * 12,
         "audio_mask": torch.ones(B, 4, dtype=torch.bool)}


def av_args(b: dict) -> list[torch.Tensor]:
    return [b[k] for k in AV_KEYS]


# -- off: nothing changes ------------------------------------------------------------------
def test_off_by_default_is_the_old_model_and_loss():
    assert TINY.contrastive_dim == 0 and TINY.contrastive_weight == 0
    old, on = tiny().eval(), tiny(contrastive_dim=16, contrastive_weight=0.1).eval()
    assert not [k for k in old.state_dict() if "contrastive" in k]  # old checkpoints' keys, exactly
    # The option adds its own parameters and changes none of the others' starting values ...
    shared = on.state_dict()
    assert all(torch.equal(v, shared[k]) for k, v in old.state_dict().items())
    b = batch()
    with torch.no_grad():
        ref = token_loss(old, b)
        plain = losses(old, b, contrastive=False)
        # ... nor the decoder's logits: a message mask passed to a model without it changes nothing.
        assert torch.equal(old(b["tokens"], *av_args(b), message_mask=message_mask(b["loss_mask"])),
                           old(b["tokens"], *av_args(b)))
        assert torch.equal(on(b["tokens"], *av_args(b)), old(b["tokens"], *av_args(b)))
    assert plain[2] is None and torch.equal(plain[0], ref[0]) and torch.equal(plain[1], ref[1])


def test_the_two_fields_are_set_together():
    for kw in ({"contrastive_dim": 8}, {"contrastive_weight": 0.5}):
        with pytest.raises(ValueError, match="contrastive_dim.*contrastive_weight.*set both"):
            dataclasses.replace(TINY, **kw)


# -- on: finite, where its gradient goes, what the message side sees -----------------------------
@pytest.mark.parametrize("autocast", [False, True])
def test_loss_is_finite_and_trains_the_encoder_and_the_message_side(autocast: bool, one_thread):
    model = tiny(contrastive_dim=16, contrastive_weight=0.1).train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        s, n, aux = losses(model, batch(), contrastive=True)
    assert torch.isfinite(s) and aux is not None and torch.isfinite(aux) and aux.dtype == torch.float32
    aux.backward()  # the aux term alone
    grads = {k: p.grad for k, p in model.named_parameters()}
    for k in ("video_in.proj.weight", "audio_in.proj.weight", "encoder.0.attn.q.weight", "contrastive.av_proj.weight",
              "contrastive.text_proj.weight", "tok_emb.weight", "contrastive.log_scale"):
        assert grads[k] is not None and torch.isfinite(grads[k]).all() and grads[k].abs().sum() > 0, k
    # The message side is its token embeddings alone: no decoder layer (which reads the A/V) takes part.
    assert all(g is None for k, g in grads.items() if k.startswith("decoder.")), "the message side went through the decoder"


def test_the_message_side_never_sees_the_av_nor_the_context():
    model, b = tiny(contrastive_dim=16, contrastive_weight=0.1).eval(), batch()
    mm = message_mask(b["loss_mask"])
    with torch.no_grad():
        _, av, text, _ = model(b["tokens"], *av_args(b), message_mask=mm)
        other = {**b, "tokens": torch.where(mm, b["tokens"], 5)}  # another context, the same messages
        _, av2, text2, _ = model(other["tokens"], *av_args(shuffle_av(b)), message_mask=mm)
    assert torch.equal(text, text2), "message embeddings changed with the A/V or the chat context"
    assert not torch.allclose(av, av2), "A/V embeddings ignored the A/V"


def test_examples_without_a_message_are_left_out():
    model, b = tiny(contrastive_dim=16, contrastive_weight=0.1).eval(), batch()
    assert not message_mask(b["loss_mask"])[-1].any()  # the last example: <eos> only
    with torch.no_grad():
        full = losses(model, b, contrastive=True)[2]
        cut = losses(model, {k: v[:-1] for k, v in b.items()}, contrastive=True)[2]
        one = losses(model, {k: v[:1] for k, v in b.items()}, contrastive=True)[2]
    assert torch.allclose(full, cut)
    assert one == 0  # a single message has no negatives


# -- end to end: training, TensorBoard, checkpoints ------------------------------------------------
@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cstore") / "store"
    make_store(d)
    return d


@pytest.fixture(scope="module")
def bigger_store(tmp_path_factory) -> Path:
    """12 VODs of 2 minutes (576 messages): on the 4-VOD store (72 training messages) the aux
    loss memorises its windows and pairs no validation window better than chance."""
    d = tmp_path_factory.mktemp("cstore12") / "store"
    make_store(d, vods=12, segments=12)
    return d


def aux_matched_and_shuffled(run: Path) -> tuple[float, float]:
    """The trained run's contrastive loss on validation batches, and with each window's A/V
    given to another example's message."""
    model, tok, cfg, _ = checkpoint.load_run(run)
    matched, shuffled = [], []
    with torch.no_grad():
        for b in make_loader(cfg.data, tok, "val", 8, 0, 1, seed=0):
            b = to_device(b, torch.device("cpu"))
            if len(b["keys"]) < 8:
                continue
            matched.append(float(losses(model, b, True)[2]))
            shuffled.append(float(losses(model, shuffle_av(b), True)[2]))
    assert matched, "no full validation batch"
    return float(np.mean(matched)), float(np.mean(shuffled))


@pytest.mark.slow
def test_it_learns_to_pair_a_window_with_its_message(bigger_store: Path, tmp_path: Path, one_thread):
    """Each second's scene names a word (tests/store_factory.py): after some steps a held-out
    window must find its own message among the batch's better than another's. Fails if the
    message side saw the A/V (a shuffled window would then match its message as well) or if
    windows and messages were paired wrongly. (Measured: 0.59 to 0.75 of the shuffled loss over
    two seeds and three weights; about 1 with either fault.)"""
    run = tmp_path / "run"
    out = main(cfg_for(bigger_store, run, *ON, 'data.val_vods=["1011"]', "train.steps=300", "train.micro_batch=8",
                       "train.eval_every=300", "train.log_every=10", "train.num_samples=0", "train.save_every=300"))
    s = scalars(run)
    assert "train/contrastive" in s and "val/contrastive" in s, sorted(s)
    assert np.isfinite(out["val/contrastive"]) and np.isfinite(out["val/loss"])
    matched, shuffled = aux_matched_and_shuffled(run)
    assert matched < 0.85 * shuffled, (matched, shuffled)


def test_bf16_training_logs_it_and_both_kinds_of_checkpoint_load(store_dir: Path, tmp_path: Path, one_thread):
    run = tmp_path / "on"
    out = main(cfg_for(store_dir, run, *ON, "train.steps=3", "train.eval_every=3", "train.mixed_precision=bf16",
                       "train.num_samples=0"))
    assert np.isfinite(out["val/contrastive"]) and np.isfinite(out["train/loss"])
    model, _, cfg, _ = checkpoint.load_run(run)  # strict: its heads are in the saved config and weights
    assert cfg.model.contrastive_dim == 32 and model.contrastive is not None
    # A run from before the option: its config.toml has no such keys, its weights no heads.
    old = tmp_path / "old"
    main(cfg_for(store_dir, old, "train.steps=2", "train.eval_every=2", "train.num_samples=0"))
    ckpt = checkpoint.latest(old)
    conf = ckpt / checkpoint.CONFIG_FILE
    conf.write_text(re.sub(r"(?m)^contrastive_\w+ = .*\n", "", conf.read_text()))
    assert "contrastive" not in conf.read_text()
    meta = json.loads((ckpt / checkpoint.META_FILE).read_text())
    meta["files"][checkpoint.CONFIG_FILE] = checkpoint.file_digest(conf)  # as an old run recorded it
    (ckpt / checkpoint.META_FILE).write_text(json.dumps(meta))
    model, tok, cfg, _ = checkpoint.load_run(old)
    assert cfg.model.contrastive_dim == 0 and not hasattr(model, "contrastive")
    b = next(iter(make_loader(cfg.data, tok, "val", 4, 0, 1, seed=0)))
    assert torch.isfinite(token_loss(model, to_device(b, torch.device("cpu")))[0])


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_process_gloo_training_with_the_aux_loss(store_dir: Path, tmp_path: Path):
    """DDP: the heads' parameters take part in every step (no unused-parameter error), each rank
    pairs its own examples."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
                    str(REPO / "trainer/main.py"), "--config", str(DEBUG), f"data.store={store_dir}", VAL, *ON,
                    f"train.run_dir={run}", "train.steps=6", "train.eval_every=6", "train.log_every=2",
                    "train.progress=false", "train.num_samples=0"],
                   check=True, env=env, timeout=600, cwd=REPO)
    s = scalars(run)
    assert all(np.isfinite(v) for _, v in s["train/contrastive"]) and len(s["train/contrastive"]) == 3
    assert np.isfinite(s["val/contrastive"][-1][1])
    checkpoint.load_run(run)
