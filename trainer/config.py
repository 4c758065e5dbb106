"""The training stage's config: one dataclass per component, loaded from launch/*.toml."""

from __future__ import annotations

from dataclasses import dataclass

from vod2chat.config import param
from vod2chat.trainer.model import ModelConfig


@dataclass
class DataConfig:
    store: str = param("./store", "the shard store: a directory or fsspec URL", flag="--store")
    streamers: list[str] = param(factory=list, help="empty: every streamer in the store")
    vods: list[str] = param(factory=list, help="'vod_id' or 'streamer/vod_id'; empty: all")
    # Sampling share per streamer in training (unlisted: 1); empty: in proportion to data size.
    streamer_weights: dict[str, float] = param(factory=dict, help="sampling share per streamer, e.g. {a = 2.0}", ge=0)
    val_vods: list[str] = param(factory=list, help="named held-out VODs (turn the hash split off)")
    test_vods: list[str] = param(factory=list, help="named test VODs")
    val_fraction: float = param(0.1, "held-out splits are by VOD (hash of its id), never by message", ge=0, le=1)
    test_fraction: float = param(0.1, "share of VODs held out for test (by hash)", ge=0, le=1)
    split_seed: int = param(0, "seed of the hash split", ge=0)
    window_s: float = param(20.0, "A/V seen before each message: [t - window_s, t], never after t", gt=0)
    context_messages: int = param(4, "previous chat messages given as text context", ge=0)
    max_context_tokens: int = param(48, "context tokens kept (the most recent)", ge=0)
    max_message_tokens: int = param(32, "message tokens trained on (longer ones are cut)", ge=1)
    streamer_token: bool = param(False, "start every example with its streamer's token (a learned embedding per "
                                        "streamer of the train split): one model, many communities")
    shuffle_buffer: int = param(512, "examples", ge=0)
    num_workers: int = param(0, "DataLoader workers per process (never more than its CPUs)", ge=0)
    # A resume streams the shard list its checkpoint pinned; true: VODs committed since join at
    # the resume step (recorded in meta.json's selection.changes).
    join_new_vods: bool = param(False, "on resume, let VODs committed since the checkpoint join the training stream")
    skip_errors: bool = param(False, "skip corrupt shards/samples with a warning instead of raising")


@dataclass
class TokenizerConfig:
    path: str = param("", "a trained tokenizer.json; empty: train one on the train split, saved in the run")
    vocab_size: int = param(4000, "BPE vocabulary when a tokenizer is trained", gt=0)
    min_frequency: int = param(2, "BPE merges seen fewer times are not learned", ge=1)
    # train.init_from grows the starting run's vocabulary, never retrains it (trainer/initfrom.py):
    # whole words of the new streamers' chat become tokens only when they pay (docs/operations.md).
    grow_min_count: int = param(20, "init_from: a word of the new streamers' chat seen fewer times gets no token", ge=1)
    grow_max_tokens: int = param(256, "init_from: most new word tokens (BPE intermediates included)", ge=0)
    grow_min_gain: float = param(0.05, "init_from: add word tokens only if they cut the new chat's tokens per "
                                       "message by more than this fraction", ge=0, lt=1)


@dataclass
class TrainConfig:
    run_dir: str = param("runs/debug", "checkpoints, TensorBoard logs and config.toml go here")
    steps: int = param(1000, "optimizer steps", ge=1)
    global_batch: int = param(64, "examples per optimizer step over all processes", ge=1)
    micro_batch: int = param(16, "examples per forward pass per process; accumulation makes up the rest", ge=1)
    lr: float = param(3e-4, "peak learning rate (AdamW; linear warm-up, cosine decay)", gt=0)
    min_lr_ratio: float = param(0.1, "final learning rate as a fraction of lr", ge=0, le=1)
    warmup_steps: int = param(100, "linear warm-up steps", ge=0)
    weight_decay: float = param(0.1, "AdamW decay on matrices (not norms, biases)", ge=0)
    beta1: float = param(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = param(0.95, "AdamW beta2", ge=0, lt=1)
    grad_clip: float = param(1.0, "gradient norm clip (0: off)", ge=0)
    mixed_precision: str = param("auto", "auto | no | bf16 | fp16 (fp16 needs a GPU: it does nothing on CPU)")
    eval_every: int = param(200, "steps between validation passes", ge=1)
    eval_batches: int = param(20, "validation batches per pass", ge=1)
    save_every: int = param(500, "steps between checkpoints", ge=1)
    keep_last: int = param(3, "checkpoints kept (and, with select=val_loss, the selected one)", ge=0)
    # With little data the last step is often past the best one (the model starts to learn its
    # training VODs by heart): val_loss keeps the checkpoint of the lowest validation loss and
    # makes it the one a run directory stands for. --resume still continues from the newest.
    select: str = param("last", "the checkpoint that eval, generate, live and --init-from take from a run "
                                "directory: the newest, or the one of the lowest validation loss (a checkpoint "
                                "is saved at each validation pass that improves it)", choices=["last", "val_loss"])
    log_every: int = param(10, "steps between TensorBoard scalars", ge=1)
    num_samples: int = param(4, "generated messages logged next to real ones at each eval", ge=0)
    seed: int = param(0, "model init and data order", ge=0)
    # A step whose loss or gradient is NaN/Inf is skipped (weights untouched) and counted; this
    # many in a row stop the run with an error before anything diverged is saved.
    max_bad_steps: int = param(10, "steps in a row with a non-finite loss or gradient before the run stops", ge=1)
    resume: bool = param(False, "continue from the latest checkpoint in run_dir", flag="--resume")
    init_from: str = param("", "start a new run from this run's (or checkpoint's) weights and tokenizer, grown for "
                               "new streamers: fresh optimizer, schedule and step", flag="--init-from")
    progress: bool = param(True, "a progress bar")


@dataclass
class RayConfig:
    """`vod2chat train --address auto --num-workers N`: the same training as Ray Train workers."""
    address: str = param("", "a Ray cluster to train on ('auto': the one this node is part of); empty: no Ray",
                         flag="--address")
    num_workers: int = param(0, "Ray Train workers, one process each (0 with an address: 1)", flag="--num-workers", ge=0)
    use_gpu: str = param("auto", "a GPU per worker (auto: if the cluster has GPUs)", choices=["auto", "true", "false"])
    cpus_per_worker: float = param(1.0, "CPUs Ray reserves per worker (its DataLoader workers run in them)", gt=0)
    max_failures: int = param(3, "times the worker group is restarted from the latest checkpoint after a worker or "
                                 "node dies (Ray Train FailureConfig); -1: forever", ge=-1)


@dataclass
class Config:
    model: ModelConfig = param(factory=ModelConfig)
    data: DataConfig = param(factory=DataConfig)
    tokenizer: TokenizerConfig = param(factory=TokenizerConfig)
    train: TrainConfig = param(factory=TrainConfig)
    ray: RayConfig = param(factory=RayConfig)


@dataclass
class TokenizerRunConfig(Config):
    """`vod2chat tokenizer`: a training config (its data selection and tokenizer sizes) and where the result goes."""
    out: str = param("tokenizer.json", "where tokenizer.json goes (use it with tokenizer.path=...)")
