"""The training stage's config: one dataclass per component, loaded from launch/*.toml."""

from __future__ import annotations

from dataclasses import dataclass, field

from vod2chat.trainer.model import ModelConfig


@dataclass
class DataConfig:
    store: str = "./store"
    streamers: list[str] = field(default_factory=list)  # empty: every streamer in the store
    vods: list[str] = field(default_factory=list)  # "vod_id" or "streamer/vod_id"; empty: all
    # Sampling share per streamer in training (unlisted: 1); empty: in proportion to data size.
    streamer_weights: dict[str, float] = field(default_factory=dict)
    val_vods: list[str] = field(default_factory=list)  # named held-out VODs (turn the hash split off)
    test_vods: list[str] = field(default_factory=list)
    val_fraction: float = 0.1  # held-out splits are by VOD (hash of its id), never by message
    test_fraction: float = 0.1
    split_seed: int = 0
    window_s: float = 20.0  # A/V seen before each message: [t - window_s, t], never after t
    context_messages: int = 4  # previous chat messages given as text context
    max_context_tokens: int = 48
    max_message_tokens: int = 32
    shuffle_buffer: int = 512  # examples
    num_workers: int = 0  # DataLoader workers per process (never more than its CPUs)
    # A resume streams the shard list its checkpoint pinned; true: VODs committed since join at
    # the resume step (recorded in meta.json's selection.changes).
    join_new_vods: bool = False
    skip_errors: bool = False  # skip corrupt shards/samples with a warning instead of raising


@dataclass
class TokenizerConfig:
    path: str = ""  # a trained tokenizer.json; empty: train one on the train split, saved in the run
    vocab_size: int = 4000
    min_frequency: int = 2


@dataclass
class TrainConfig:
    run_dir: str = "runs/debug"
    steps: int = 1000
    global_batch: int = 64  # examples per optimizer step over all processes
    micro_batch: int = 16  # examples per forward pass per process; accumulation makes up the rest
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16 (fp16 needs a GPU: it does nothing on CPU)
    eval_every: int = 200
    eval_batches: int = 20
    save_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    num_samples: int = 4  # generated messages logged next to real ones at each eval
    seed: int = 0
    resume: bool = False  # continue from the latest checkpoint in run_dir
    progress: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
