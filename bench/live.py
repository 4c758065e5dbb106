"""Is `vod2chat live` fast enough to be live? Two measurements on a synthetic stream
(`vod2chat synth`'s scenes, H.264 + AAC in MPEG-TS), with the real CLI in a subprocess:

1. Real time: the stream is written to a growing file at the wall clock's pace while `live`
   follows it with `--serve`; an SSE client (what the overlay page runs) records when each
   message arrives. Delay = arrival - (wall time at which stream time t was written), where t is
   the message's time: the newest frame it may be about. A message is about frames in
   (t - window, t], so the oldest frame it can be about is `window` seconds older again.
   Target: median delay <= 2 s (beyond the model's window).
2. Catch-up: `live` on the finished file, as fast as it can: stream-seconds processed per
   wall-second, from live's own summary (wall clock from the first byte read to the end, model
   loading excluded). Target >= 1.5.

    python bench/live.py --run demo_out/run            # after `make demo`
    python bench/live.py --run RUN --duration 120 --rate 60

Prints a table (markdown); `--json` also writes the numbers.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sse_client(port: int, got: list[tuple[float, dict]], stop: threading.Event) -> None:
    """Reads /events like the overlay page: (arrival wall time, message) per new event id (a
    reconnect's backlog repeats events the page already has; it skips them, and so does this)."""
    seen: set[bytes] = set()
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/events")
            r = conn.getresponse()
            event_id = b""
            while not stop.is_set():
                line = r.fp.readline()
                if not line:
                    break
                if line.startswith(b"id: "):
                    event_id = line[4:].strip()
                elif line.startswith(b"data: ") and event_id not in seen:
                    seen.add(event_id)
                    got.append((time.time(), json.loads(line[6:])))
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)


def live_cmd(a: argparse.Namespace, source: str, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "vod2chat.launch.cli", "live", "--run", a.run, "--source", source,
           "--device", a.device, "--seed", "0", *extra]
    if a.weights:
        cmd += ["--weights", a.weights]
    if a.rate:
        cmd += ["--rate", str(a.rate)]
    return cmd


def summary(stderr: str) -> tuple[float, float]:
    m = re.search(r"over ([\d.]+) s of stream in ([\d.]+) s", stderr)
    if not m:
        raise RuntimeError(f"live printed no summary:\n{stderr[-3000:]}")
    return float(m[1]), float(m[2])


def main() -> int:
    from vod2chat.synth.scenes import plan_stream, write_live
    from vod2chat.ingest.precision import machine_line
    from vod2chat.shards.store import Store
    from vod2chat.trainer.checkpoint import load_run

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=str(REPO / "demo_out/run"), help="a trained run (default: make demo's)")
    p.add_argument("--duration", type=float, default=60.0, help="stream seconds")
    p.add_argument("--rate", type=float, default=0.0, help="messages per minute (default: the run's chat rate)")
    p.add_argument("--weights", default="random", help="encoder weights the run's store used ('' for the hub cache)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="bench_out/live")
    p.add_argument("--json", action="store_true", help="also write {out}/live.json")
    a = p.parse_args()
    if not Path(a.run).exists():
        print(f"no run at {a.run}: run `make demo` first, or pass --run", file=sys.stderr)
        return 2
    run_cfg = load_run(a.run)[2]
    window = run_cfg.data.window_s
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    stream = plan_stream(seed=1234, duration=a.duration)

    # 1. real time, through the overlay's event stream
    path = out / "realtime.ts"
    path.unlink(missing_ok=True)
    port = free_port()
    proc = subprocess.Popen(live_cmd(a, str(path), "--serve", f"127.0.0.1:{port}", "--stall-timeout", "5"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    got: list[tuple[float, dict]] = []
    stop = threading.Event()
    deadline = time.monotonic() + 300
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"live did not start:\n{proc.stderr.read()[-3000:]}")
            time.sleep(0.2)
    client = threading.Thread(target=sse_client, args=(port, got, stop), daemon=True)
    client.start()
    time.sleep(0.5)
    print(f"writing {a.duration:.0f} s of stream in real time to {path} ...", file=sys.stderr)
    t0 = write_live(stream, path, speed=1.0)
    err = proc.communicate(timeout=a.duration + 300)[1]
    stop.set()
    delays = np.asarray([wall - (t0 + m["t"]) for wall, m in got])
    rt_stream, rt_wall = summary(err)

    # 2. catch-up on the finished file
    done = subprocess.run(live_cmd(a, str(path), "--stall-timeout", "1"), capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=a.duration * 10 + 300)
    cu_stream, cu_wall = summary(done.stderr)
    cu_wall -= 1.0  # the stall timeout spent waiting after the last byte is not work
    speed = cu_stream / max(cu_wall, 1e-9)

    rows = [
        ("stream-seconds processed per wall-second (catch-up on the finished file)", f"{speed:.2f}", ">= 1.5"),
        ("median delay: newest frame a message sees -> message on the page", f"{np.median(delays):.2f} s",
         "<= 2 s"),
        ("90th percentile of that delay", f"{np.percentile(delays, 90):.2f} s", ""),
        ("median delay from the oldest frame in the model's window", f"{np.median(delays) + window:.2f} s",
         f"<= {window:g} + 2 s"),
        ("messages on the page (real-time run)", f"{len(got)} over {rt_stream:.0f} s", ""),
    ]
    print(f"\nvod2chat live, run {a.run} (window {window:g} s), {a.duration:.0f} s synthetic stream, "
          f"{os.cpu_count()} CPUs")
    # live computes features in the precision of the run's store
    print(machine_line(f"encoders {Store(run_cfg.data.store).precision()}, model fp32", device=a.device) + "\n")
    print("| what | measured | target |\n|---|---:|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    if a.json:
        (out / "live.json").write_text(json.dumps({
            "stream_s_per_wall_s": speed, "median_delay_s": float(np.median(delays)),
            "p90_delay_s": float(np.percentile(delays, 90)), "window_s": window, "messages": len(got),
            "realtime_stream_s": rt_stream, "realtime_wall_s": rt_wall}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
