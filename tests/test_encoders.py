"""Encoders: weights the test writes itself load from a path and from the torch hub cache and
give the saved model's outputs; fingerprints name the weights; exact shapes, row counts and
dtypes; finite, input-dependent, batching-invariant features. CPU, a handful of frames."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchvision
from torchvggish import vggish_input
from torchvggish.torchvggish import VGG, make_layers

from vod2chat.ingest.encoders import (AudioEncoder, VideoEncoder, WeightsNotFound, cpu_has_native_bf16, fingerprint_id,
                                      hub_checkpoints_dir, resolve_precision)
from vod2chat.ingest.precision import ENV

WIN = 15360  # samples per VGGish row (0.96 s at 16 kHz)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# Tolerance against an fp32 reference, relative and in units of the reference's largest value:
# fp32 differs by summation order only; bf16 autocast keeps 8 mantissa bits per operation (seen:
# 0.5% of the largest value after ResNet-50). Both run on every CPU (bf16 is emulated, slowly,
# where it is not native), so a test passing on one CPU kind passes on the other.
TOL = {"fp32": 2e-3, "bf16": 3e-2}


# -- real inputs, decoded with PyAV ----------------------------------------------------
@pytest.fixture(scope="module")
def frames(real_data: Path) -> np.ndarray:
    """Four 224x224 RGB frames from different scenes of a real video."""
    out = []
    with av.open(str(real_data / "video" / "big_buck_bunny_0_30.webm")) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % 150 == 0:
                out.append(f.reformat(width=224, height=224, format="rgb24").to_ndarray())
            if len(out) == 4:
                break
    return np.stack(out)


@pytest.fixture(scope="module")
def wave(real_data: Path) -> np.ndarray:
    """A real soundtrack (not silent) resampled to 16 kHz mono float32, about 9.6 s."""
    res = av.AudioResampler(format="flt", layout="mono", rate=16000)
    chunks = []
    with av.open(str(real_data / "video" / "chaplin.mp4")) as c:
        for f in c.decode(audio=0):
            chunks += [r.to_ndarray().reshape(-1) for r in res.resample(f)]
    chunks += [r.to_ndarray().reshape(-1) for r in res.resample(None)]
    w = np.concatenate(chunks).astype(np.float32)
    assert np.sqrt(np.mean(w**2)) > 0.05
    return w


# fp32: what these check (shapes, finiteness, batching) is not precision, and `auto` differs by CPU kind.
@pytest.fixture(scope="module")
def random_video() -> VideoEncoder:
    return VideoEncoder(weights="random", batch_size=4, precision="fp32")


@pytest.fixture(scope="module")
def random_audio() -> AudioEncoder:
    return AudioEncoder(weights="random", precision="fp32")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache of this test's own (TORCH_HOME), as `checkpoints/` dir."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    d = hub_checkpoints_dir()
    assert d == tmp_path / "torch" / "hub" / "checkpoints"
    d.mkdir(parents=True)
    return d


def sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def seeded(build, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# -- video -----------------------------------------------------------------------------
def resnet_reference(sd: dict, frames: np.ndarray) -> np.ndarray:
    """The saved model itself, plain NCHW fp32: what the encoder must reproduce."""
    net = torchvision.models.resnet50(weights=None)
    net.load_state_dict(sd)
    net.fc = torch.nn.Identity()
    x = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD
    with torch.inference_mode():
        return net.eval()(x).numpy()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_video_weights_from_path_and_hub_cache_match_the_saved_model(hub: Path, frames: np.ndarray, precision: str):
    model = seeded(lambda: torchvision.models.resnet50(weights=None), 123)
    sd = model.state_dict()
    # Non-trivial BatchNorm statistics, as trained weights have, so loading them is really tested.
    for k, v in sd.items():
        if k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
        elif k.endswith("running_mean"):
            v.uniform_(-0.1, 0.1)
    path = hub / "resnet50-11ad3fa6.pth"
    torch.save(sd, path)
    x = frames[:2]
    ref = resnet_reference(sd, x)

    explicit = VideoEncoder(weights=str(path), precision=precision)
    from_hub = VideoEncoder(precision=precision)  # weights=None: the hub cache, found under its release name
    a, b = explicit.encode(x), from_hub.encode(x)
    assert a.dtype == np.float16 and a.shape == (2, 2048) and explicit.precision == precision
    tol = TOL[precision]
    np.testing.assert_allclose(a.astype(np.float32), ref, rtol=tol, atol=tol * np.abs(ref).max())
    np.testing.assert_array_equal(a, b)
    assert explicit.fingerprint["weights"] == from_hub.fingerprint["weights"] == f"sha256:{sha16(path)}"
    assert explicit.fingerprint == from_hub.fingerprint

    sd["conv1.weight"] *= 1.5  # other weights: other hash, other features, other fingerprint
    other_path = hub.parent / "other.pth"
    torch.save(sd, other_path)
    other = VideoEncoder(weights=str(other_path), precision=precision)
    assert other.fingerprint["weights"] == f"sha256:{sha16(other_path)}" != explicit.fingerprint["weights"]
    assert fingerprint_id(other.fingerprint) != fingerprint_id(explicit.fingerprint)
    assert np.abs(other.encode(x[:1]).astype(np.float32) - a[:1]).max() > 1e-2 * np.abs(a).max()


def test_missing_weights_say_where_they_were_looked_for_and_how_to_provide_them(hub: Path, tmp_path: Path):
    with pytest.raises(WeightsNotFound) as e:
        VideoEncoder()
    msg = str(e.value)
    assert str(hub / "resnet50-11ad3fa6.pth") in msg and str(hub / "resnet50-0676ba61.pth") in msg
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in msg
    assert "--video-weights" in msg and "--weights random" in msg
    assert isinstance(e.value, FileNotFoundError)

    with pytest.raises(WeightsNotFound) as e:
        AudioEncoder()
    msg = str(e.value)
    assert str(hub / "vggish-10086976.pth") in msg and "--audio-weights" in msg and "--weights random" in msg
    assert "vggish-10086976.pth" in msg.split("curl", 1)[1]

    missing = tmp_path / "nope" / "r50.pth"
    with pytest.raises(WeightsNotFound, match="--weights random") as e:
        VideoEncoder(weights=str(missing))
    assert str(missing) in str(e.value)
    with pytest.raises(WeightsNotFound, match=str(missing)):
        AudioEncoder(weights="random", pca=str(missing))


def test_random_weights_are_fingerprinted_as_random_and_leave_the_rng_alone(random_video: VideoEncoder,
                                                                           random_audio: AudioEncoder):
    before = torch.random.get_rng_state()
    again = VideoEncoder(weights="random", precision="fp32")
    assert torch.equal(torch.random.get_rng_state(), before)

    fp = random_video.fingerprint
    assert fp["weights"] == "random:seed=0" and len(fp["random_init_sha256"]) == 16
    assert fp == again.fingerprint and json.loads(json.dumps(fp)) == fp
    assert (fp["model"], fp["dim"], fp["dtype"], fp["input_size"]) == ("resnet50", 2048, "float16", [224, 224])
    assert "fps" not in fp  # the caller's business

    afp = random_audio.fingerprint
    assert afp["weights"] == "random:seed=0" and afp["pca"] is None and afp["postprocess"].startswith("none")
    assert (afp["sample_rate"], afp["hop"], afp["window"], afp["dim"]) == (16000, 0.96, 0.96, 128)

    fid = fingerprint_id(fp)
    assert len(fid) == 12 and int(fid, 16) >= 0
    assert fingerprint_id(dict(reversed(list(fp.items())))) == fid  # key order does not matter
    assert fingerprint_id({**fp, "fps": 1.0}) != fid != fingerprint_id(afp)


def test_video_features_are_finite_moderate_and_input_dependent(random_video: VideoEncoder, frames: np.ndarray):
    odd = np.ascontiguousarray(frames[:1, :90, :160])  # 90x160: resized by the encoder
    out = random_video.encode(frames)
    assert out.shape == (4, 2048) and out.dtype == np.float16
    # Random-init ResNet-50 in eval mode: pooled values stay in the low hundreds, far from fp16's 65504.
    assert np.isfinite(out).all() and 1.0 < np.abs(out).max() < 1e3
    dist = np.abs(out[:, None].astype(np.float32) - out[None].astype(np.float32)).max(-1)
    assert (dist[~np.eye(4, dtype=bool)] > 1e-2 * np.abs(out).max()).all()
    r = random_video.encode(odd)
    assert r.shape == (1, 2048) and np.isfinite(r).all()
    assert random_video.encode(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, 2048)
    with pytest.raises(ValueError, match="uint8"):
        random_video.encode(frames.astype(np.float32))


def test_video_batching_does_not_change_features(random_video: VideoEncoder, frames: np.ndarray):
    x = frames[:3]
    random_video.batch_size = 2
    whole = random_video.encode(x).astype(np.float32)
    random_video.batch_size = 3
    parts = np.concatenate([random_video.encode(x[:1]), random_video.encode(x[1:])]).astype(np.float32)
    random_video.batch_size = 4
    np.testing.assert_allclose(whole, parts, rtol=2e-3, atol=2e-3 * np.abs(whole).max())


# -- audio -----------------------------------------------------------------------------
def he_init(net: torch.nn.Module) -> torch.nn.Module:
    """Weights whose outputs depend on the input (PyTorch's default init leaves VGGish mostly bias)."""
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.normal_(m.bias, std=0.01)
    return net


def reflect_tail(window: np.ndarray) -> np.ndarray:
    """One row's input as the encoder defines it: the window plus its 240-sample mirrored tail."""
    return np.concatenate([window, window[-2:-242:-1]])


@pytest.mark.parametrize("n,rows", [(0, 0), (WIN - 1, 0), (WIN, 1), (3 * WIN + 5, 3)])
def test_audio_row_count_is_exactly_len_over_15360(random_audio: AudioEncoder, n: int, rows: int):
    w = (np.random.default_rng(n).standard_normal(n) * 0.1).astype(np.float32)
    out = random_audio.encode(w)
    assert out.shape == (rows, 128) and out.dtype == np.float16 and np.isfinite(out).all()


def test_audio_rows_depend_only_on_their_window(random_audio: AudioEncoder, wave: np.ndarray):
    n = len(wave) // WIN
    assert n >= 5
    whole = random_audio.encode(wave).astype(np.float32)
    random_audio.batch_size = 2
    parts = np.concatenate([random_audio.encode(wave[: 2 * WIN]), random_audio.encode(wave[2 * WIN :])])
    random_audio.batch_size = 256
    np.testing.assert_allclose(whole, parts.astype(np.float32), rtol=2e-3, atol=1e-3 * np.abs(whole).max())
    assert whole.shape == (n, 128) and np.isfinite(whole).all()
    # Real audio of different moments gives different rows; silence differs from all of them.
    silent = random_audio.encode(np.zeros(WIN, np.float32)).astype(np.float32)
    assert np.abs(whole[1] - whole[3]).max() > 1e-2 * np.abs(whole).max()
    assert (np.abs(whole - silent).max(1) > 1e-2 * np.abs(whole).max()).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_audio_weights_from_hub_match_torchvggish_pipeline_and_pca(hub: Path, wave: np.ndarray, tmp_path: Path,
                                                                   precision: str):
    # Weights saved from torchvggish's own VGG (the release's features.*/embeddings.* keys).
    vgg = seeded(lambda: he_init(VGG(make_layers(), postprocess=False)), 7).eval()
    path = hub / "vggish-10086976.pth"
    torch.save(vgg.state_dict(), path)
    w = wave[: 3 * WIN + 100]

    # The reference: torchvggish's numpy log-mel on each window (+ its mirrored tail), its VGG.
    ex = np.concatenate([vggish_input.waveform_to_examples(reflect_tail(w[j * WIN:(j + 1) * WIN].astype(np.float64)),
                                                           16000, return_tensor=False) for j in range(3)])
    with torch.inference_mode():
        ref = vgg(torch.tensor(ex, dtype=torch.float32)[:, None]).numpy()

    raw = AudioEncoder(pca="none", precision=precision)  # found in the hub cache
    out = raw.encode(w)
    assert raw.fingerprint["weights"] == f"sha256:{sha16(path)}" and raw.fingerprint["pca"] is None
    tol = TOL[precision]
    np.testing.assert_allclose(out.astype(np.float32), ref, rtol=tol, atol=tol * np.abs(ref).max())
    assert np.array_equal(AudioEncoder(weights=str(path), pca="none", precision=precision).encode(w), out)

    # PCA params as the release stores them (numpy arrays), found next to the weights.
    g = np.random.default_rng(0)
    means = ref.mean(0).astype(np.float64)
    vecs = np.linalg.qr(g.standard_normal((128, 128)))[0] / (ref - means).std()  # projections of order 1
    torch.save({"pca_eigen_vectors": vecs, "pca_means": means}, hub / "vggish_pca_params-970ea276.pth")
    pca = AudioEncoder(precision=precision)
    q = pca.encode(w).astype(np.float32)
    assert pca.fingerprint["pca"] == f"sha256:{sha16(hub / 'vggish_pca_params-970ea276.pth')}"
    assert pca.fingerprint["postprocess"].startswith("pca")
    assert fingerprint_id(pca.fingerprint) != fingerprint_id(raw.fingerprint)
    assert q.shape == (3, 128) and (q == np.round(q)).all() and q.min() >= 0 and q.max() <= 255
    # In bf16 the embedding itself moves by more than a quantization step: PCA checked on its own rows.
    rows = ref if precision == "fp32" else out.astype(np.float32)
    expect = np.round((np.clip((rows - means) @ vecs.T, -2, 2) + 2) * 255 / 4)
    assert np.abs(q - expect).max() <= 1 and (q == expect).mean() > 0.95
    assert len(np.unique(q)) > 20  # not everything clipped to one end


# -- precision -------------------------------------------------------------------------
def test_precision_is_in_the_fingerprint_and_auto_follows_the_cpu(random_video: VideoEncoder, frames: np.ndarray):
    """bf16 autocast moves features by more than float16 storage rounding, so it is another
    feature space; "auto" picks bf16 on a CPU only where it is native (else it is slower)."""
    fp32 = VideoEncoder(weights="random", batch_size=4, precision="fp32")
    bf16 = VideoEncoder(weights="random", batch_size=4, precision="bf16")
    assert fp32.fingerprint["precision"] == "fp32" and bf16.fingerprint["precision"] == "bf16 autocast"
    assert fingerprint_id(fp32.fingerprint) != fingerprint_id(bf16.fingerprint)
    a, b = fp32.encode(frames[:2]).astype(np.float32), bf16.encode(frames[:2]).astype(np.float32)
    rel = np.abs(a - b).max() / np.abs(a).max()
    assert 0 < rel < 0.1  # the same features up to bf16's ~3 significant digits, but not the same
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ENV, raising=False)
        want = "bf16" if cpu_has_native_bf16() else "fp32"
        assert resolve_precision("auto", torch.device("cpu")) == want == AudioEncoder(weights="random").precision
        for kind in ("fp32", "bf16"):  # either CPU kind, whatever this one is
            mp.setenv(ENV, kind)
            auto = AudioEncoder(weights="random")
            assert auto.precision == kind and auto.fingerprint["precision"] == ("fp32" if kind == "fp32" else "bf16 autocast")
    with pytest.raises(ValueError, match="choose one of"):
        VideoEncoder(weights="random", precision="int8")
