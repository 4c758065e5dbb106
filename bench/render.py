"""How fast is `vod2chat render`? Seconds of video written per wall second for a chat column
(350x720, 30 fps, VP9 with alpha by default), against:

- the ceiling: the same encoder alone, fed the same frames already drawn and converted (what
  rendering would cost if drawing were free);
- a naive renderer: every frame redrawn with PIL (all visible messages), converted and encoded
  (what a straightforward renderer does; TwitchDownloader's users report about real time).

Two chats: the sample TwitchDownloader/v5 JSON (about 1 message a second) and a synthetic busy
chat (--busy messages a second, long and short messages, emoji, non-Latin names).

    python bench/render.py                         # 60 s of each chat, .webm
    python bench/render.py --duration 120 --out-format .mp4

Prints the CPU, its load, a progress bar per run and a markdown table.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from vod2chat.inference.render import (ChatColumn, Style, close_output, find_font, hash_colour, load_font,
                                       open_output, render_column, write_frame, _layout, _tokens)
from vod2chat.ingest.chat import Message, parse_chat
from vod2chat.ingest.precision import machine_line

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared/data/real/chat/v5_rechat_1087079172.json"


def cpu_seconds() -> float:
    """CPU time of this process, all threads: on a shared machine, wall time also counts the others."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def busy_chat(per_s: float, duration: float, seed: int = 0) -> list[Message]:
    rng = random.Random(seed)
    words = "LUL KEKW pog what a play no way gg ez 😂 これは すごい wow clip it".split()
    names = [f"viewer{i}" for i in range(200)] + ["日本語の名前", "Ünïcödé", "x" * 25]
    t, out = 0.0, []
    while t < duration:
        t += rng.expovariate(per_s)
        out.append(Message(round(t, 3), rng.choice(names), " ".join(rng.choices(words, k=rng.randint(1, 30)))))
    return out


def column(msgs: list[Message], font: str, w: int, h: int) -> ChatColumn:
    return ChatColumn(msgs, {}, {}, Style(width=w, font_size=15, timestamps=False, bg=(0, 0, 0, 0)), h, font)


def ceiling(msgs: list[Message], font: str, out: str, w: int, h: int, fps: Fraction,
            seconds: float) -> tuple[float, float]:
    """The encoder alone: every distinct frame drawn and converted first, then only encode."""
    col = column(msgs, font, w, h)
    n = int(seconds * fps)
    enc = open_output(out, w, h, fps, 30)
    frames, last = [], None
    for i in range(n):
        img, changed = col.at(i / fps)
        if changed or last is None:
            last = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgba").reformat(format=enc.pix_fmt)
        frames.append(last)
    t0, c0 = time.perf_counter(), cpu_seconds()
    for f in tqdm(frames, desc="ceiling", unit="frame"):
        write_frame(enc, f)
    close_output(enc)
    return seconds / (time.perf_counter() - t0), seconds / (cpu_seconds() - c0)


def naive(msgs: list[Message], font_path: str, out: str, w: int, h: int, fps: Fraction,
          seconds: float) -> tuple[float, float]:
    """Every frame drawn from scratch with PIL: the visible messages laid out and drawn, bottom up."""
    from PIL import Image, ImageDraw

    font = load_font(font_path, 15)
    style = Style(width=w, font_size=15, timestamps=False, bg=(0, 0, 0, 0))
    times = [m.t for m in msgs]
    enc = open_output(out, w, h, fps, 30)
    n = int(seconds * fps)
    t0, c0 = time.perf_counter(), cpu_seconds()
    for i in tqdm(range(n), desc="naive", unit="frame"):
        t = i / fps
        im = Image.new("RGBA", (w, h), style.bg)
        draw = ImageDraw.Draw(im)
        y, k = h, int(np.searchsorted(times, t, side="right")) - 1
        while k >= 0 and y > 0:
            m = msgs[k]
            lines = _layout(_tokens(m, hash_colour(m.user), style, {}), font, font, w - 2 * style.pad)
            y -= len(lines) * style.line_h + style.pad
            for j, line in enumerate(lines):
                for x, kind, p, c in line:
                    if kind != "emote":
                        draw.text((style.pad + x, y + j * style.line_h), p, font=font, fill=c)
            k -= 1
        write_frame(enc, av.VideoFrame.from_ndarray(np.asarray(im), format="rgba").reformat(format=enc.pix_fmt))
    close_output(enc)
    return seconds / (time.perf_counter() - t0), seconds / (cpu_seconds() - c0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=20.0, help="seconds of video per run (the same for all three)")
    p.add_argument("--busy", type=float, default=5.0, help="messages per second of the synthetic chat")
    p.add_argument("--out-format", default=".webm", choices=[".webm", ".mov", ".mp4"])
    p.add_argument("--width", type=int, default=350)
    p.add_argument("--height", type=int, default=720)
    a = p.parse_args()
    fps = Fraction(30)
    font, font_desc = find_font()
    print(f"# vod2chat render bench: {machine_line('no model: precision plays no part', what='render')}, load average "
          f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}, {a.width}x{a.height} @ 30 fps {a.out_format}, "
          f"font {font_desc}", flush=True)
    chats = {f"busy synthetic chat ({a.busy:g} msg/s)": busy_chat(a.busy, a.duration)}
    if SAMPLE.is_file():
        chats = {"sample chat (v5 JSON, ~1 msg/s)": parse_chat(SAMPLE).messages, **chats}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / f"bench{a.out_format}")
        for name, msgs in chats.items():
            print(f"## {name}", flush=True)
            c0 = cpu_seconds()
            stats = render_column(column(msgs, font, a.width, a.height), out, 0.0, a.duration, fps, 30, True)
            ours = (stats["seconds"] / stats["wall_s"], stats["seconds"] / (cpu_seconds() - c0))
            top = ceiling(msgs, font, out, a.width, a.height, fps, a.duration)
            slow = naive(msgs, font, out, a.width, a.height, fps, a.duration)
            rows.append((name, ours, top, slow, stats["rebuilds"]))
    print("\nseconds of video per wall second (in brackets: per CPU second of this process, i.e. on one quiet "
          "core; the encoders' threads can use more than one)\n")
    print("| chat | vod2chat render | encoder alone (ceiling) | naive PIL redraw | render / ceiling | render / naive "
          "| column rebuilds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, ours, top, slow, rebuilds in rows:
        cell = lambda v: f"{v[0]:.1f}x ({v[1]:.1f}x)"  # noqa: E731
        print(f"| {name} | {cell(ours)} | {cell(top)} | {cell(slow)} | {ours[0] / top[0]:.2f} | "
              f"{ours[0] / slow[0]:.1f} | {rebuilds} |")
    print(f"\nload average after: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
