"""A real headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
JSON messages separated by NUL bytes on fds 3 and 4): nothing beyond the standard library. Used by
the `browser` fixture (conftest.py) of the replay and overlay tests."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
NO_CHROMIUM = "Chromium is not installed (Debian: apt-get install -y chromium; or set CHROMIUM=/path/to/chrome)"


class Browser:
    """Just enough of the Chrome DevTools Protocol: one page, Runtime.evaluate."""

    def __init__(self, profile: Path):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4. Copy both ends above any fd
        # the child may already use, so placing them on 3 and 4 cannot clobber one another.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]

        def child_fds() -> None:
            os.dup2(high[0], 3)  # dup2 clears close-on-exec on the copy
            os.dup2(high[1], 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--allow-file-access-from-files",
                 f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen([CHROMIUM, *flags], preexec_fn=child_fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (to_chrome_r, from_chrome_w, *high):
            os.close(fd)
        self._buf, self._id = b"", 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium exited")
            self._buf += chunk

    def js(self, expr: str, timeout: float = 30.0) -> Any:
        """Evaluate an expression (promises awaited) in the page and return its JSON value."""
        r = self.call("Runtime.evaluate", {"expression": expr, "awaitPromise": True, "returnByValue": True},
                      self.session, timeout)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page threw: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url}, self.session)
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('video')")

    def wait_for(self, cond: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(f"!!({cond})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never reached: {cond}")
            time.sleep(0.05)

    def close(self) -> None:
        for fd in (self._w, self._r):
            os.close(fd)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
