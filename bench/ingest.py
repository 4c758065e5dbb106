"""Ingest throughput against the right baseline and the machine's ceiling, side by side in one run.

    .venv/bin/python bench/ingest.py                  # 480p30 (10 min), 1080p60 (3 min), the 10 fps clip
    .venv/bin/python bench/ingest.py --quick          # a smoke run: short clips, same table
    .venv/bin/python bench/ingest.py --levers         # + each throughput lever on and off, 480p30
    .venv/bin/python bench/ingest.py --device cuda    # on a GPU machine: GPU ceiling, GPU prototype, --device cuda

For each input, three contenders:

- prototype: bench/prototype.py, the research prototype's documented method (10 s chunks,
  frames sampled at 1 fps through Resize(256)/CenterCrop(224) and ResNet-50 one chunk per
  batch, VGGish on each chunk's 16 kHz audio, one .pt per chat line), in this process, on the
  first --proto-seconds of the same file (its cost per VOD-second does not change along a file);
- vod2chat: the `vod2chat ingest` command in a subprocess with its local Ray, on the whole file,
  timed from the command's start to its exit (Python start-up, Ray and the encoders included);
  its per-stage seconds come from the command's own summary;
- ceiling: ResNet-50 alone on batches of 224x224 frames already in memory, at the best
  precision this device has (fp32 and bf16 are both measured where bf16 is native; on a CPU
  without AVX512-BF16/AMX bf16 is emulated and slower, so fp32 is the ceiling), as VOD-seconds
  per second at 1 fps. Decode, VGGish and writing share the same cores, so no ingest reaches it.

Inputs are Twitch-like (bench/twitchlike.py: H.264 with 2 s GOPs and B-frames + AAC, at 480p30
and 1080p60, textured and moving) and the 10 fps synthetic clip of earlier benches; they are
written once into --cache. Random encoder weights (seed 0) in all contenders: no weights can be
downloaded here, and weights do not change the arithmetic. Nothing printed is hard-coded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import torch

from bench.prototype import PrototypeIngestStats, prototype_ingest
from bench.twitchlike import make_vod
from vod2chat.ingest.chat import parse_chat
from vod2chat.ingest.config import EncoderConfig
from vod2chat.ingest.encoders import cpu_has_native_bf16
from vod2chat.ingest.precision import machine_line, resolve_precision
from vod2chat.ingest.media import probe
from vod2chat.ingest.worker import Encoders

STAGES = ("decode video", "resize", "ResNet-50", "decode audio", "VGGish", "write")


@dataclass
class Result:
    name: str
    seconds: float  # VOD seconds ingested
    wall_s: float
    stages: dict[str, float] = field(default_factory=dict)  # seconds
    note: str = ""

    @property
    def speed(self) -> float:
        return self.seconds / self.wall_s if self.wall_s else 0.0


# -- contenders ---------------------------------------------------------------------------
def ceiling(device: str, batch: int, batches: int, emulated: bool = True) -> dict[str, float]:
    """ResNet-50 alone: frames/s (= VOD-s/s at 1 fps) per precision, channels-last, 224x224 in
    memory. `emulated`: also time bf16 where the CPU only emulates it (to show it loses)."""
    native = device == "cuda" or cpu_has_native_bf16()
    enc = {p: Encoders(EncoderConfig(video_weights="random", audio_weights="random", precision=p, video_batch=batch),
                       device).video
           for p in ("fp32", "bf16") if p == "fp32" or native or emulated}
    g = np.random.default_rng(0)
    frames = g.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    out = {}
    for p, e in enc.items():
        emulated = p != "fp32" and device == "cpu" and not cpu_has_native_bf16()
        x = frames[:4] if emulated else frames  # emulated bf16 is several times slower: 4 frames say enough
        e.encode(x[:2])  # warm-up: kernel selection, allocation
        sync(device)
        t0 = time.perf_counter()
        for _ in range(1 if emulated else batches):
            e.encode(x)
        sync(device)
        out[p + (" (emulated)" if emulated else "")] = (1 if emulated else batches) * len(x) / (time.perf_counter() - t0)
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_prototype(video: Path, chat: Path, out: Path, device: str, seconds: float) -> Result:
    from bench.prototype import resnet50_trunk

    shutil.rmtree(out, ignore_errors=True)
    enc = Encoders(EncoderConfig(video_weights="random", audio_weights="random", precision="fp32"), device)
    net = resnet50_trunk().to(device)
    net.load_state_dict(enc.video.net.state_dict())  # the very same random weights as vod2chat's
    vggish = enc.audio.net
    with torch.inference_mode():  # warm-up, as for every contender
        net(torch.zeros(2, 3, 224, 224, device=device))
    w0 = time.perf_counter()
    messages = parse_chat(chat).messages
    st: PrototypeIngestStats = prototype_ingest(video, messages, out, net, vggish, max_seconds=seconds)
    wall = time.perf_counter() - w0
    return Result("prototype", st.seconds, wall, st.stages(),
                  f"{st.frames} frames of {st.frames_decoded} decoded, {st.audio_examples} VGGish examples, "
                  f"{st.files} files")


def run_vod2chat(video: Path, chat: Path, store: Path, device: str, sets: list[str], label: str = "vod2chat",
                 timeout: float = 3600) -> Result:
    shutil.rmtree(store, ignore_errors=True)
    inputs = store.parent / f"{store.name}-inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir(parents=True)
    for p in (video, chat):
        (inputs / p.name).symlink_to(p)
    cmd = [sys.executable, "-m", "vod2chat.launch.cli", "ingest", "--store", str(store), "--streamer", "bench",
           "--weights", "random", "--device", device, "--set", "progress=false",
           *(x for s in sets for x in ("--set", s)), str(inputs)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"vod2chat ingest failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    seconds, stages = parse_summary(res.stdout)
    seconds = probe(video).duration  # the summary rounds hours; the whole file was ingested
    return Result(label, seconds, wall, stages, " ".join(sets))


def parse_summary(text: str) -> tuple[float, dict[str, float]]:
    """VOD seconds and per-stage seconds from `vod2chat ingest`'s summary table."""
    m = re.search(r"ingested: ([\d.]+) h of VOD", text)
    t = re.search(r"^time: (.*)$", text, re.M)
    if not m or not t:
        raise RuntimeError(f"cannot read the ingest summary:\n{text[-2000:]}")
    stages = {k.strip(): float(v) for k, v in re.findall(r"([^,]+?) ([\d.]+) s(?:,|$)", t.group(1))}
    return float(m.group(1)) * 3600, stages


# -- report -------------------------------------------------------------------------------
def ms_per_s(x: float | None, seconds: float) -> str:
    return "-" if x is None else f"{1000 * x / seconds:.0f}"


def table(title: str, proto: Result, ours: Result, ceil: dict[str, float], device: str) -> str:
    best = max(ceil, key=ceil.get)
    c = ceil[best]
    st = ours.stages
    in_actor = st.get("in actor", 0.0)
    # Decoding runs in the decode thread alongside the encoders: the actor's own thread spends
    # its time encoding, writing, or waiting for the decoder.
    busy = sum(st.get(k, 0.0) for k in ("ResNet-50", "VGGish", "write", "waiting for decode"))
    if "waiting for decode" not in st:
        busy += st.get("decode video", 0.0) + st.get("decode audio", 0.0)
    ray = ours.wall_s - in_actor  # Python + Ray start-up, encoder construction, planning, scheduling, commit
    rows = [
        f"### {title}",
        "",
        f"| | prototype (documented method) | vod2chat ingest (local Ray) | ceiling: ResNet-50 alone ({best}, {device}) |",
        "|---|---:|---:|---:|",
        f"| VOD-seconds per wall-second | {proto.speed:.2f} | {ours.speed:.2f} | {c:.2f} |",
        f"| vs prototype | 1.00x | **{ours.speed / proto.speed:.2f}x** | {c / proto.speed:.2f}x |",
        f"| fraction of the ceiling | {proto.speed / c:.0%} | **{ours.speed / c:.0%}** | 100% |",
        f"| VOD seconds measured | {proto.seconds:.0f} | {ours.seconds:.0f} | - |",
        "| **milliseconds per VOD-second** | | | |",
    ]
    for s in STAGES:
        o = st.get(s)
        if s == "resize":
            o_txt = "in decode (swscale)"
        else:
            o_txt = ms_per_s(o, ours.seconds)
        c_txt = f"{1000 / c:.0f}" if s == "ResNet-50" else "-"
        rows.append(f"| {s} | {ms_per_s(proto.stages.get(s), proto.seconds)} | {o_txt} | {c_txt} |")
    if "waiting for decode" in st:
        rows.append(f"| (ResNet-50/VGGish waiting for the decode thread) | - | "
                    f"{ms_per_s(st['waiting for decode'], ours.seconds)} | - |")
    rows.append(f"| Ray + start-up (Python, Ray, encoders, plan, commit) | - | {ms_per_s(ray, ours.seconds)} | - |")
    rows.append(f"| other (Python between stages) | {ms_per_s(proto.wall_s - sum(proto.stages.values()), proto.seconds)} | "
                f"{ms_per_s(in_actor - busy, ours.seconds)} | - |")
    rows.append(f"| **total** | {ms_per_s(proto.wall_s, proto.seconds)} | {ms_per_s(ours.wall_s, ours.seconds)} | "
                f"{1000 / c:.0f} |")
    if ours.seconds and st.get("start-up") is not None:
        steady = ours.seconds / max(1e-9, in_actor)
        rows.append(f"\nvod2chat in its actor (steady state, without start-up): {steady:.2f} VOD-s/s = "
                    f"{steady / c:.0%} of the ceiling; start-up {st['start-up']:.1f} s, plan {st.get('plan', 0):.1f} s.")
    rows.append(f"prototype: {proto.note}.")
    return "\n".join(rows)


def lever_runs(video: Path, chat: Path, work: Path, device: str) -> str:
    """Each lever against the shipped settings, side by side, on the same clip, in one run."""
    variants = [
        ("shipped settings (PyAV with keyframe seeks, 1 decoder thread beside torch)", []),
        ("torch on 1 CPU (an actor per CPU, as before)", ["cpus_per_actor=1", "num_actors=1"]),
        ("no decode-ahead thread", ["prefetch=false"]),
        ("no keyframe seeks (every frame decoded up to each sample)", ["seek_keyframes=false"]),
        ("decoder decord (the earlier default)", ["decode_backend=decord"]),
        ("decoder threads = the actor's CPUs", [f"decode_threads={min(4, os.cpu_count() or 2)}"]),
        ("1 part in flight per actor", ["parts_in_flight=1"]),
    ]
    if device == "cuda" or cpu_has_native_bf16():
        variants.append(("fp32 (auto is bf16 here)", ["precision=fp32"]))
    base = ["segments_per_shard=2"]  # 60 s parts: two parts of two 32-frame chunks on the 2-minute clip
    rows = ["| lever (vs shipped settings) | VOD-s/s end to end | VOD-s/s in the actor | vs shipped (in the actor) | "
            "decode video ms/s | ResNet-50 ms/s | waiting for decode ms/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    results = []
    for name, sets in variants:
        r = run_vod2chat(video, chat, work / "lever-store", device, base + sets, name)
        results.append(r)
        print(f"  lever {name}: {r.speed:.2f} VOD-s/s", flush=True)
    def steady(r: Result) -> float:  # without Ray start-up, which a 2-minute clip cannot amortise
        return r.seconds / max(1e-9, r.stages.get("in actor", r.wall_s))

    ref = steady(results[0])
    for r in results:
        st = r.stages
        rows.append(f"| {r.name} | {r.speed:.2f} | {steady(r):.2f} | {steady(r) / ref:.2f}x | "
                    f"{ms_per_s(st.get('decode video'), r.seconds)} | "
                    f"{ms_per_s(st.get('ResNet-50'), r.seconds)} | {ms_per_s(st.get('waiting for decode'), r.seconds)} |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 480p30 only, seconds-long clips")
    p.add_argument("--inputs", default="480p30,1080p60,clip10fps", help="comma-separated: 480p30, 720p60, 1080p60, clip10fps")
    p.add_argument("--seconds", type=float, default=600.0, help="length of the 480p30 VOD (and 720p60)")
    p.add_argument("--seconds-1080", type=float, default=180.0, help="length of the 1080p60 VOD")
    p.add_argument("--proto-seconds", type=float, default=120.0, help="the prototype ingests this much of each VOD")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--levers", action="store_true", help="also measure each lever on and off (480p30, 120 s)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "vod2chat" / "bench"),
                   help="where the generated VODs are kept between runs")
    p.add_argument("--work", default="", help="working directory (default: a temporary one, removed)")
    a = p.parse_args(argv)
    if a.quick:
        a.inputs, a.seconds, a.seconds_1080, a.proto_seconds = "480p30", 6.0, 6.0, 4.0
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="vod2chat-bench-ingest-") if not a.work else None
    work = Path(a.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(a.cache)
    print(f"# vod2chat ingest bench: device={a.device}, {torch.get_num_threads()} torch threads here, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    auto = resolve_precision("auto", torch.device(a.device))
    print(machine_line(f"{auto} (auto: the shipped settings; each ceiling row names its own)", device=a.device),
          flush=True)
    inputs: list[tuple[str, Path, Path]] = []
    for name in a.inputs.split(","):
        t0 = time.perf_counter()
        if name == "clip10fps":
            from vod2chat.synth.scenes import synthesize

            secs = 20.0 if a.quick else 120.0
            d = cache / f"clip10fps-{secs:g}s"
            video, chat = d / "100001.mkv", d / "100001.irc"
            if not video.exists():
                synthesize(d, seed=0, duration=secs, fps=10, size=(160, 90))
        else:
            video, chat = make_vod(cache, name, a.seconds_1080 if name == "1080p60" else a.seconds)
        info = probe(video)
        inputs.append((name, video, chat))
        print(f"input {name}: {video} ({info.width}x{info.height} {info.fps:g} fps, {info.duration:.0f} s, "
              f"{video.stat().st_size / 2**20:.0f} MiB; ready in {time.perf_counter() - t0:.0f} s)", flush=True)

    batch = 4 if a.quick else 256 if a.device == "cuda" else 32  # a GPU needs big batches to be busy
    ceil = ceiling(a.device, batch, 1 if a.quick else 3, emulated=not a.quick)
    print("ceiling (ResNet-50 alone, frames/s = VOD-s/s at 1 fps): "
          + ", ".join(f"{k} {v:.2f}" for k, v in ceil.items()), flush=True)
    tables, ours_by_input = [], {}
    for name, video, chat in inputs:
        proto = run_prototype(video, chat, work / f"proto-{name}", a.device, a.proto_seconds)
        print(f"{name} prototype: {proto.speed:.2f} VOD-s/s (load average {os.getloadavg()[0]:.2f})", flush=True)
        ours = run_vod2chat(video, chat, work / f"store-{name}", a.device, [])
        print(f"{name} vod2chat: {ours.speed:.2f} VOD-s/s (load average {os.getloadavg()[0]:.2f})", flush=True)
        tables.append(table(f"{name}: {probe(video).duration:.0f} s", proto, ours, ceil, a.device))
        ours_by_input[name] = ours
    print()
    print("\n\n".join(tables))
    for name, r in ours_by_input.items():
        if name in ("1080p60", "720p60"):
            ranked = sorted(((r.stages.get(k, 0.0), k) for k in ("decode video", "ResNet-50", "decode audio", "VGGish",
                                                                 "write", "waiting for decode")), reverse=True)
            print(f"\nWhat bounds vod2chat at {name}: " + ", then ".join(
                f"{k} ({ms_per_s(v, r.seconds)} ms per VOD-second)" for v, k in ranked[:3])
                + " (decoding runs in its own thread beside the encoders; waiting = the encoders idle for it).")
    if a.levers:
        video, chat = make_vod(cache, "480p30", 24.0 if a.quick else 120.0)
        print("\n### levers, 480p30, each alone against the shipped settings (one run)\n")
        print(lever_runs(video, chat, work, a.device))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
