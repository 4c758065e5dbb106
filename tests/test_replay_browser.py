"""The HTML replay page in a real browser: headless Chromium plays the video (muted) and the
chat column shows exactly the messages whose t <= video.currentTime, while playing and after
seeking forward and back.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages separated by NUL bytes on fds 3 and 4), so the test needs nothing beyond the
standard library. Skipped when no Chromium is installed (Debian: apt-get install -y chromium).
"""

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

import pytest

from vod2chat.ingest.chat import Message
from vod2chat.inference.replay import write_html

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y "
                                "chromium; or set CHROMIUM=/path/to/chrome)")


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


@pytest.fixture
def browser(tmp_path: Path):
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


MESSAGES = [Message(round(0.25 * k + 0.1, 2), f"user{k % 4}", f"message number {k}") for k in range(27)]  # 0.1..6.6 s


def visible(b: Browser) -> dict[str, Any]:
    return b.js("""({t: document.getElementById('video').currentTime,
                     n: document.querySelectorAll('#messages .msg').length,
                     last: (document.querySelector('#messages .msg:last-child .text') || {}).textContent || null})""")


def expected_count(t: float) -> int:
    return sum(m.t <= t + 1e-3 for m in MESSAGES)


def check_in_sync(b: Browser, s: dict[str, Any]) -> None:
    # currentTime moves on between the page's last sync and our read: allow the frame it takes.
    assert expected_count(s["t"] - 0.1) <= s["n"] <= expected_count(s["t"]), s
    if s["n"]:
        assert s["last"] == f": message number {s['n'] - 1}"


def seek(b: Browser, t: float) -> dict[str, Any]:
    b.js(f"""new Promise(ok => {{ const v = document.getElementById('video');
                v.addEventListener('seeked', () => requestAnimationFrame(() => ok(true)), {{once: true}});
                v.currentTime = {t}; }})""")
    return visible(b)


@pytest.mark.parametrize("embed", [False, True], ids=["video-by-relative-path", "video-as-data-uri"])
def test_chat_follows_the_video(browser: Browser, real_data: Path, tmp_path: Path, embed: bool):
    video = real_data / "video/in1.mp4"  # 7 s H.264: plays in Chromium
    page = tmp_path / "site" / "replay.html"
    page.parent.mkdir()
    write_html(MESSAGES, page, video, embed_max_bytes=(1 << 30) if embed else 0)
    browser.open(page.as_uri())
    assert browser.js("document.querySelectorAll('#messages .msg').length") == 0  # t = 0: nothing yet
    browser.wait_for("document.getElementById('video').readyState >= 2")
    assert browser.js("document.getElementById('video').error") is None
    assert browser.js("document.getElementById('video').duration") == pytest.approx(7.0, abs=0.2)

    # Play (muted) and watch messages appear as time advances.
    browser.js("(async () => { const v = document.getElementById('video'); v.muted = true; await v.play(); return true })()")
    counts = []
    for target in (0.8, 1.8, 3.0):
        browser.wait_for(f"document.getElementById('video').currentTime >= {target}", timeout=30)
        s = visible(browser)
        check_in_sync(browser, s)
        counts.append(s["n"])
    assert counts[0] > 0 and counts[0] < counts[1] < counts[2]
    browser.js("document.getElementById('video').pause(), true")

    # Seeking forward and back: the column shows exactly the messages up to the new time.
    for t in (6.0, 1.0, 4.3, 0.0):
        s = seek(browser, t)
        assert s["t"] == pytest.approx(t, abs=0.05)
        assert s["n"] == expected_count(s["t"]), (t, s)
        if s["n"]:
            assert s["last"] == f": message number {s['n'] - 1}"
    assert browser.js("document.getElementById('count').textContent") == "0"


HOSTILE = ["<!-- the old escape broke JSON.parse here", "</script><script>window.pwned = 1</script>",
           "--> <![CDATA[ ]]>", "a & b &amp; c", "line\u2028separator\u2029paragraph", "<img src=x onerror='window.pwned=2'>",
           "\\u003c/script\\u003e", "</SCRIPT >", "<b>bold</b> \"quoted\" 'single'", "emoji 🐸 and ünïcode"]


def test_hostile_messages_render_as_text(browser: Browser, real_data: Path, tmp_path: Path):
    msgs = [Message(0.1 + 0.2 * k, f"user<{k}>&", text) for k, text in enumerate(HOSTILE)]
    page = tmp_path / "replay.html"
    write_html(msgs, page, real_data / "video/in1.mp4", title="<!-- </script> title", embed_max_bytes=0)
    browser.open(page.as_uri())
    browser.wait_for("document.getElementById('video').readyState >= 1")
    seek(browser, 5.0)
    shown = browser.js("""[...document.querySelectorAll('#messages .msg')].map(d =>
        [d.querySelector('.user').textContent, d.querySelector('.text').textContent])""")
    assert shown == [[m.user, ": " + m.text] for m in msgs]  # every message, exactly as written
    assert browser.js("window.pwned === undefined && document.querySelectorAll('#messages img, #messages b').length === 0")
    assert browser.js("document.title") == "<!-- </script> title"
