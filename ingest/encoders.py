"""Feature encoders: ResNet-50 (pooled 2048-d per frame) and VGGish (128-d per 0.96 s of audio).

Weights are never downloaded. Each encoder loads a state_dict from an explicit path, or from the
standard torch hub cache (`<torch.hub.get_dir()>/checkpoints/<release file name>`), or is
random-initialised with a fixed seed when explicitly asked for ("random": offline demos, tests).
Anything else raises WeightsNotFound, whose message lists the paths searched and the commands
that provide the weights.

Each encoder carries a `fingerprint`: a JSON-serialisable dict naming everything that decides its
feature space (model, weights identity, input geometry, post-processing, output dim and dtype).
Features with different fingerprints must never be mixed; `fingerprint_id` is its short hash.
Compute precision is in it ("precision": fp32, or bf16/fp16 autocast): reduced precision moves
features by more than float16 storage rounding, so a store never mixes them silently. What
"auto" means, and how a store keeps one precision across CPU kinds, is in ingest/precision.py.

Audio framing: row j of AudioEncoder.encode is VGGish on samples [j*15360, (j+1)*15360) only.
VGGish's own framing (25 ms STFT windows every 10 ms, 96 frames per example) needs 15600
samples for 96 frames, i.e. it reads 240 samples (15 ms) past the 0.96 s window, so
`waveform_to_examples` returns 0 examples for exactly 15360 samples and k-1 for 15360*k + 239.
Here each window's missing 240-sample tail is a reflection of its own end: every row depends on
its window alone, so `len(wave) // 15360` rows come back exactly, and encoding a VOD in chunks
gives the same rows as encoding it whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vod2chat.ingest.precision import (PRECISIONS, cpu_has_native_bf16, resolve_precision,  # noqa: F401 - re-exported
                                      warn_if_emulated)

log = logging.getLogger(__name__)

RANDOM = "random"
RANDOM_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFound(FileNotFoundError):
    """Encoder weights are missing; the message says exactly how to provide them."""


@dataclass(frozen=True)
class Release:
    """A published checkpoint: the file name torch hub caches it under, and where it comes from."""

    filename: str
    url: str


RESNET50_RELEASES = (
    Release("resnet50-11ad3fa6.pth", "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"),  # IMAGENET1K_V2
    Release("resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth"),  # IMAGENET1K_V1
)
_TORCHVGGISH = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
VGGISH_RELEASES = (Release("vggish-10086976.pth", _TORCHVGGISH + "vggish-10086976.pth"),)
VGGISH_PCA_RELEASES = (Release("vggish_pca_params-970ea276.pth", _TORCHVGGISH + "vggish_pca_params-970ea276.pth"),)


# -- fingerprints and weights identity -------------------------------------------------
def fingerprint_id(fp: dict[str, Any]) -> str:
    """Short stable hash of a fingerprint: key order and process do not matter."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (first 16 hex), hashed once per (path, size, mtime) per process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()[:16]
        _warn_if_release_hash_differs(p, h.hexdigest())
    return _FILE_HASHES[key]


def _warn_if_release_hash_differs(path: Path, digest: str) -> None:
    # torch hub names releases `<name>-<sha256 prefix>.pth`: a mismatch means a truncated download
    # or a different file under a release name. Warn only: the fingerprint records the real hash.
    m = re.fullmatch(r".+-([0-9a-f]{8,})\.pth", path.name)
    if m and not digest.startswith(m.group(1)):
        log.warning("%s: sha256 %s... does not match the release hash %s in its name", path, digest[:16], m.group(1))


def state_dict_sha256(sd: dict[str, torch.Tensor]) -> str:
    """Identity of in-memory weights (names, shapes, dtypes, values): first 16 hex of a sha256."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def hub_checkpoints_dir() -> Path:
    """Where torch hub keeps downloaded checkpoints (honours TORCH_HOME and torch.hub.set_dir)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _how_to_provide(what: str, releases: tuple[Release, ...], flag: str) -> str:
    hub = hub_checkpoints_dir()
    optional = VGGISH_PCA_RELEASES if releases == VGGISH_RELEASES else ()
    lines = [
        "Provide them in one of these ways:",
        "  1. put the released file into the torch hub cache (download it on a machine with internet, copy it here):",
        f"       mkdir -p {hub}",
        *(f"       curl -L -o {hub / r.filename} {r.url}" for r in releases[:1]),
        *(f"       curl -L -o {hub / r.filename} {r.url}   # optional: AudioSet's PCA + 8-bit quantisation"
          for r in optional),
        f"  2. pass an explicit state_dict file: {flag} PATH",
        f"  3. for offline demos and tests only: --weights random (random-initialised {what}; the store's "
        "fingerprints record it and never mix it with real features)",
    ]
    return "\n".join(lines)


def resolve_weights(weights: str | os.PathLike | None, what: str, releases: tuple[Release, ...],
                    flag: str) -> Path | None:
    """Path of the state_dict to load, or None for random init. Never downloads."""
    if weights is not None and str(weights) == RANDOM:
        return None
    if weights is not None:
        p = Path(weights).expanduser()
        if p.is_file():
            return p
        raise WeightsNotFound(f"{what} weights file {p} does not exist.\n" + _how_to_provide(what, releases, flag))
    searched = [hub_checkpoints_dir() / r.filename for r in releases]
    for p in searched:
        if p.is_file():
            return p
    raise WeightsNotFound(
        f"{what} weights not found. Searched:\n" + "".join(f"  {p}\n" for p in searched)
        + _how_to_provide(what, releases, flag)
    )


def check_weights(video_weights: str | None, audio_weights: str | None) -> None:
    """Raise WeightsNotFound now, in the calling process, rather than from inside every Ray actor
    (where the same message arrives buried in an actor-death traceback)."""
    resolve_weights(video_weights, "ResNet-50", RESNET50_RELEASES, "--video-weights")
    resolve_weights(audio_weights, "VGGish", VGGISH_RELEASES, "--audio-weights")


def load_state_dict(path: Path) -> dict[str, Any]:
    """A state_dict from a .pth file, loaded safely (weights_only). Some releases (the VGGish PCA
    params) pickle numpy arrays: those numpy types alone are allowed through."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - retried once with numpy allowed, else re-raised with the file
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e2:  # noqa: BLE001
            # torch's own message suggests loading unsafely: never repeat that advice to a user.
            why = ("it holds objects other than tensors and arrays (a pickle that could run code: refused)"
                   if isinstance(e2, pickle.UnpicklingError) else f"{type(e2).__name__}: {str(e2)[:200]}")
            raise RuntimeError(f"{path}: not a loadable state_dict; {why}. "
                               "Pass a .pth saved with torch.save(model.state_dict())") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a training checkpoint wrapping the weights
    if not isinstance(obj, dict):
        raise RuntimeError(f"{path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    return obj


def _numpy_safe_globals() -> list[Any]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved np.core to np._core
    dtypes = [type(np.dtype(t)) for t in (np.float32, np.float64, np.float16, np.int64)]
    # Files pickled under numpy 1 name `numpy.core.multiarray.*`: allow that spelling too.
    aliases = [(core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
               (core.multiarray.scalar, "numpy.core.multiarray.scalar")]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *dtypes, *aliases]


def load_into(model: nn.Module, sd: dict[str, Any], path: Path, optional: tuple[str, ...] = ()) -> None:
    """load_state_dict that names the file and the mismatching keys; keys starting with an
    `optional` prefix may be missing (e.g. the classifier a feature extractor drops anyway)."""
    res = model.load_state_dict(sd, strict=False)
    missing = [k for k in res.missing_keys if not k.startswith(optional)]
    if missing or res.unexpected_keys:
        raise RuntimeError(
            f"{path}: state_dict does not fit {type(model).__name__}: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {res.unexpected_keys[:5]}"
            f"{'...' if len(res.unexpected_keys) > 5 else ''}. Pass the released checkpoint's file."
        )


_RANDOM_HASHES: dict[tuple[str, int], str] = {}


def random_init(build: Callable[[], nn.Module], name: str, seed: int = RANDOM_SEED) -> tuple[nn.Module, str]:
    """Random-initialised model with a fixed seed, without touching the caller's RNG state, and
    the hash of its weights (so a torch version that initialises differently fingerprints differently)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    key = (name, seed)
    if key not in _RANDOM_HASHES:
        _RANDOM_HASHES[key] = state_dict_sha256(model.state_dict())
    return model, _RANDOM_HASHES[key]


_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _precision_tag(precision: str) -> str:
    return "fp32" if precision == "fp32" else f"{precision} autocast"


def _autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager[Any]:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _weights_identity(path: Path | None, random_hash: str | None) -> dict[str, str]:
    if path is None:
        return {"weights": f"{RANDOM}:seed={RANDOM_SEED}", "random_init_sha256": str(random_hash)}
    return {"weights": f"sha256:{file_sha256(path)}"}


# -- video: ResNet-50 ------------------------------------------------------------------
def _resnet50_trunk() -> nn.Module:
    import torchvision  # imported here: the audio-only path and the trainer do not need it

    return torchvision.models.resnet50(weights=None)


class VideoEncoder:
    """torchvision ResNet-50, classifier removed: uint8 RGB frames -> float16 [N, 2048] pooled features.

    Random-init (weights="random") outputs are finite and moderate: torchvision's init with
    eval-mode BatchNorm (running stats 0/1) gives pooled values up to ~150 on real frames and ~400
    on worst-case binary noise, far below float16's 65504, so no rescaling is applied.
    """

    dim = 2048
    input_size = (224, 224)

    def __init__(self, weights: str | None = None, device: str = "cpu", batch_size: int = 64,
                 precision: str = "auto"):
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        warn_if_emulated(self.precision, self.device)
        self.amp = _AMP[self.precision]
        self.batch_size = int(batch_size)
        self.weights_path = resolve_weights(weights, "ResNet-50", RESNET50_RELEASES, "--video-weights")
        if self.weights_path is None:
            net, rhash = random_init(_resnet50_trunk, "resnet50")
        else:
            net, rhash = _resnet50_trunk(), None
            load_into(net, load_state_dict(self.weights_path), self.weights_path, optional=("fc.",))
        net.fc = nn.Identity()  # pooled 2048-d features, not ImageNet logits
        self.net = net.eval().requires_grad_(False).to(self.device, memory_format=torch.channels_last)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255
        self.fingerprint: dict[str, Any] = {
            "model": "resnet50", "impl": "torchvision", **_weights_identity(self.weights_path, rhash),
            "input_size": list(self.input_size), "input": "uint8 RGB",
            "resize": "bilinear+antialias, only if not already 224x224",
            "normalize": "imagenet", "postprocess": "global average pool (fc=Identity)",
            "precision": _precision_tag(self.precision), "dim": self.dim, "dtype": "float16",
        }

    def _prepare(self, frames: np.ndarray) -> torch.Tensor:
        # uint8 goes to the device as is (4x less traffic than float), converted there; from
        # pinned memory on CUDA so the copy is a real asynchronous DMA.
        x = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device.type == "cuda":
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] RGB (224x224 from the decoder; other sizes are resized) -> float16 [N, 2048]."""
        ok = isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
        if not ok:
            got = f"{type(frames).__name__} {getattr(frames, 'dtype', '')} {getattr(frames, 'shape', '')}"
            raise ValueError(f"VideoEncoder.encode wants uint8 RGB frames [N, H, W, 3], got {got}")
        out = np.empty((len(frames), self.dim), np.float16)
        for i in range(0, len(frames), self.batch_size):
            x = self._prepare(frames[i : i + self.batch_size])
            with _autocast(self.device, self.amp):
                y = self.net(x)
            out[i : i + len(x)] = y.float().cpu().numpy()
        return out


# -- audio: VGGish ---------------------------------------------------------------------
def _vggish_net() -> nn.Module:
    # torchvggish's own VGG with postprocess=False: the same state_dict keys as the release
    # (features.*, embeddings.*); its vggish() constructor would download, so it is not used.
    from torchvggish.torchvggish import VGG, make_layers

    return VGG(make_layers(), postprocess=False)


def _vggish_random() -> nn.Module:
    # PyTorch's default init (kaiming_uniform with a=sqrt(5), random biases) shrinks the signal
    # layer by layer until the output is mostly bias: random VGGish features would barely depend on
    # the audio. He-normal weights and zero biases keep them input-driven, as torchvision's init
    # does for the random ResNet-50.
    net = _vggish_net()
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return net


class LogMel(nn.Module):
    """VGGish's log-mel examples (torchvggish.mel_features) in torch, one example per window:
    [B, 15360] samples -> [B, 1, 96, 64], each window's 240-sample STFT tail reflection-padded."""

    def __init__(self) -> None:
        super().__init__()
        from torchvggish import mel_features, vggish_params as p

        self.win = int(round(p.SAMPLE_RATE * p.STFT_WINDOW_LENGTH_SECONDS))  # 400
        self.hop = int(round(p.SAMPLE_RATE * p.STFT_HOP_LENGTH_SECONDS))  # 160
        self.n_fft = 2 ** int(np.ceil(np.log2(self.win)))  # 512
        self.frames = int(round(p.EXAMPLE_WINDOW_SECONDS / p.STFT_HOP_LENGTH_SECONDS))  # 96
        self.samples = int(round(p.EXAMPLE_WINDOW_SECONDS * p.SAMPLE_RATE))  # 15360
        self.tail = self.win + (self.frames - 1) * self.hop - self.samples  # 240
        self.log_offset = p.LOG_OFFSET
        mel = mel_features.spectrogram_to_mel_matrix(
            num_mel_bins=p.NUM_MEL_BINS, num_spectrogram_bins=self.n_fft // 2 + 1, audio_sample_rate=p.SAMPLE_RATE,
            lower_edge_hertz=p.MEL_MIN_HZ, upper_edge_hertz=p.MEL_MAX_HZ)
        self.register_buffer("mel", torch.tensor(mel, dtype=torch.float32), persistent=False)
        hann = mel_features.periodic_hann(self.win)
        self.register_buffer("window", torch.tensor(hann, dtype=torch.float32), persistent=False)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        x = F.pad(windows[:, None], (0, self.tail), mode="reflect")[:, 0]
        frames = x.unfold(-1, self.win, self.hop) * self.window  # [B, 96, 400]
        spec = torch.fft.rfft(frames, n=self.n_fft).abs()
        return torch.log(spec @ self.mel + self.log_offset)[:, None]


class AudioEncoder:
    """VGGish: float32 16 kHz mono -> float16 [len // 15360, 128], one row per 0.96 s window.

    With the PCA params (found next to the weights or in the hub cache, or given as `pca`) the
    rows are AudioSet's released embedding format: PCA-whitened, clipped to [-2, 2] and quantised
    to integers 0..255 (exact in float16). Without them they are the raw embedding layer's ReLU
    outputs (>= 0). The fingerprint's "postprocess" says which. pca="none" turns PCA off.
    Random weights (He-normal, zero biases; see _vggish_random) give values of order 1 to 30.
    """

    dim = 128
    sample_rate = 16000
    hop = 0.96
    window = 0.96

    def __init__(self, weights: str | None = None, pca: str | None = None, device: str = "cpu", batch_size: int = 256,
                 precision: str = "auto"):
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        warn_if_emulated(self.precision, self.device)
        self.amp = _AMP[self.precision]
        self.batch_size = int(batch_size)
        self.weights_path = resolve_weights(weights, "VGGish", VGGISH_RELEASES, "--audio-weights")
        self.pca_path = self._find_pca(pca)  # before the slow part: a missing file fails fast
        if self.weights_path is None:
            net, rhash = random_init(_vggish_random, "vggish")
        else:
            net, rhash = _vggish_net(), None
            load_into(net, load_state_dict(self.weights_path), self.weights_path)
        self.net = net.eval().requires_grad_(False).to(self.device, memory_format=torch.channels_last)
        self.logmel = LogMel().to(self.device)
        self.samples = self.logmel.samples
        self._pca: tuple[torch.Tensor, torch.Tensor] | None = None
        post: dict[str, Any] = {"postprocess": "none (embedding ReLU, >= 0)", "pca": None}
        if self.pca_path is not None:
            self._pca = self._load_pca(self.pca_path)
            post = {"postprocess": "pca+clip[-2,2]+quantize8 (integers 0..255)",
                    "pca": f"sha256:{file_sha256(self.pca_path)}"}
        self.fingerprint: dict[str, Any] = {
            "model": "vggish", "impl": "torchvggish", **_weights_identity(self.weights_path, rhash),
            "sample_rate": self.sample_rate, "window": self.window, "hop": self.hop, "window_samples": self.samples,
            "log_mel": "stft 25ms/10ms hann, 64 mel 125-7500Hz, log(x+0.01), 96 frames; 240-sample tail reflected",
            **post, "precision": _precision_tag(self.precision), "dim": self.dim, "dtype": "float16",
        }

    def _find_pca(self, pca: str | None) -> Path | None:
        if pca is not None and str(pca) == "none":
            return None
        if pca is not None:
            p = Path(pca).expanduser()
            if not p.is_file():
                raise WeightsNotFound(
                    f"VGGish PCA params file {p} does not exist. Download {VGGISH_PCA_RELEASES[0].url} "
                    "to that path, or leave audio_pca unset (raw VGGish embeddings; --weights random for demos).")
            return p
        if self.weights_path is None:
            return None  # random weights: AudioSet's PCA of trained embeddings means nothing
        for d in (self.weights_path.parent, hub_checkpoints_dir()):
            for r in VGGISH_PCA_RELEASES:
                if (d / r.filename).is_file():
                    return d / r.filename
        log.info("VGGish PCA params not found next to %s or in %s: raw embeddings",
                 self.weights_path, hub_checkpoints_dir())
        return None

    def _load_pca(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvggish import vggish_params as p

        sd = load_state_dict(path)
        try:
            vecs = torch.as_tensor(np.asarray(sd[p.PCA_EIGEN_VECTORS_NAME]), dtype=torch.float32)
            means = torch.as_tensor(np.asarray(sd[p.PCA_MEANS_NAME]), dtype=torch.float32).reshape(1, -1)
        except KeyError as e:
            raise RuntimeError(f"{path}: PCA params need keys {p.PCA_EIGEN_VECTORS_NAME!r} and "
                               f"{p.PCA_MEANS_NAME!r}, has {sorted(sd)}") from e
        if vecs.shape != (self.dim, self.dim) or means.shape[1] != self.dim:
            raise RuntimeError(f"{path}: PCA params have shapes {tuple(vecs.shape)} / {tuple(means.shape)}, "
                               "want (128, 128) / (128,)")
        return vecs.to(self.device), means.to(self.device)

    def _postprocess(self, emb: torch.Tensor) -> torch.Tensor:
        # AudioSet's release format (vggish_postprocess.py): PCA-whiten, clip, quantise to 8 bits.
        if self._pca is None:
            return emb
        from torchvggish import vggish_params as p

        vecs, means = self._pca
        x = (emb.float() - means) @ vecs.T
        x = x.clamp(p.QUANTIZE_MIN_VAL, p.QUANTIZE_MAX_VAL)
        return torch.round((x - p.QUANTIZE_MIN_VAL) * (255.0 / (p.QUANTIZE_MAX_VAL - p.QUANTIZE_MIN_VAL)))

    @torch.inference_mode()
    def examples(self, wave: np.ndarray) -> torch.Tensor:
        """Log-mel examples [len // 15360, 1, 96, 64] on the encoder's device."""
        if not (isinstance(wave, np.ndarray) and wave.ndim == 1 and np.issubdtype(wave.dtype, np.floating)):
            got = f"{type(wave).__name__} {getattr(wave, 'dtype', '')} {getattr(wave, 'shape', '')}"
            raise ValueError(f"AudioEncoder.encode wants float mono samples [n] at 16 kHz, got {got}")
        k = len(wave) // self.samples
        if k == 0:
            return torch.zeros((0, 1, self.logmel.frames, self.logmel.mel.shape[1]), device=self.device)
        w = torch.from_numpy(np.ascontiguousarray(wave[: k * self.samples], dtype=np.float32))
        return self.logmel(w.to(self.device).view(k, self.samples))

    @torch.inference_mode()
    def encode(self, wave: np.ndarray) -> np.ndarray:
        """float32 16 kHz mono [n] -> float16 [n // 15360, 128]; row j is samples [j*15360, (j+1)*15360)."""
        ex = self.examples(wave)
        out = np.empty((len(ex), self.dim), np.float16)
        for i in range(0, len(ex), self.batch_size):
            with _autocast(self.device, self.amp):
                emb = self.net(ex[i : i + self.batch_size])
            out[i : i + len(emb)] = self._postprocess(emb.float()).cpu().numpy()
        return out


# -- timing ----------------------------------------------------------------------------
def throughput(encoder: VideoEncoder | AudioEncoder, seconds: float = 0.0, n: int = 32, repeats: int = 1) -> float:
    """Items per second of `encoder.encode` on synthetic input, after one warm-up call: frames/s for
    VideoEncoder (n frames), audio seconds/s for AudioEncoder (`seconds` of noise, default n windows)."""
    g = np.random.default_rng(0)
    if isinstance(encoder, VideoEncoder):
        x: np.ndarray = g.integers(0, 256, (n, *encoder.input_size, 3), dtype=np.uint8)
        items = float(n)
    else:
        seconds = seconds or n * encoder.hop
        x = (g.standard_normal(int(seconds * encoder.sample_rate)) * 0.1).astype(np.float32)
        items = seconds
    encoder.encode(x[: len(x) // 8 or 1])
    if encoder.device.type == "cuda":
        torch.cuda.synchronize(encoder.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        encoder.encode(x)
    return items * repeats / (time.perf_counter() - t0)
