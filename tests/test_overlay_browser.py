"""The live overlay page in a real headless Chromium (driven over the DevTools protocol, as in
test_replay_browser): new messages appear as `vod2chat live` writes them, the background is
transparent (an OBS browser source), and the page reconnects by itself when the server restarts.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from browser import CHROMIUM, NO_CHROMIUM, Browser
from helpers import finish, live_cmd, start, writer
from vod2chat.inference.overlay import Overlay
from vod2chat.synth.scenes import plan_stream

pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shown(b: Browser) -> list[str]:
    return b.js("[...document.querySelectorAll('#chat .msg')].map(e => e.textContent)")


def wait_for(b: Browser, cond: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not b.js(f"!!({cond})"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"page never reached: {cond}; shows {shown(b)}")
        time.sleep(0.05)


def test_page_shows_live_messages_as_they_are_written(random_encoder_run: Path, browser: Browser, tmp_path: Path):
    port = free_port()
    path = tmp_path / "obs.ts"
    proc, lines = start(live_cmd(random_encoder_run, str(path), "--serve", f"127.0.0.1:{port}", "--stall-timeout", "3"))
    try:
        deadline = time.monotonic() + 180
        while True:  # the server is up once the model is loaded
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the overlay server never came up"
                time.sleep(0.2)
        th, box = writer(plan_stream(seed=81, duration=20.0), path, speed=1.0)
        browser.call("Page.navigate", {"url": f"http://127.0.0.1:{port}/"}, browser.session)
        wait_for(browser, "document.readyState === 'complete' && window.vod2chat && window.vod2chat.opened > 0")
        assert browser.js("getComputedStyle(document.body).backgroundColor") == "rgba(0, 0, 0, 0)"
        assert browser.js("getComputedStyle(document.documentElement).backgroundColor") == "rgba(0, 0, 0, 0)"
        # New messages appear while the stream is still being written.
        n0 = len(shown(browser))
        wait_for(browser, f"document.querySelectorAll('#chat .msg').length >= {n0 + 3}")
        assert box.get("end") is None
        th.join(60)
        err = finish(proc, lines, timeout=300)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    # Everything it wrote is on the page, in order, as text (users and messages).
    msgs = lines.messages()
    assert shown(browser) == [f"{m['user']}: {m['text']}" for m in msgs][-30:]  # the page keeps 30


def test_page_reconnects_by_itself_when_the_server_restarts(browser: Browser):
    port = free_port()
    o = Overlay.start(f"127.0.0.1:{port}")
    try:
        browser.call("Page.navigate", {"url": o.url}, browser.session)
        wait_for(browser, "window.vod2chat && window.vod2chat.opened > 0")
        for i in range(3):
            o.publish({"t": float(i), "user": f"user{i}", "text": f"<b>before {i}</b>"})
        wait_for(browser, "document.querySelectorAll('#chat .msg').length === 3")
        assert shown(browser)[0] == "user0: <b>before 0</b>"  # text, never markup
        assert browser.js("document.querySelectorAll('#chat b').length") == 0
    finally:
        o.close()
    time.sleep(1.5)  # down for a while: the page's reconnect attempts are refused
    o2 = Overlay.start(f"127.0.0.1:{port}")
    try:
        wait_for(browser, "window.vod2chat.opened >= 2", timeout=30)
        for i in range(2):
            o2.publish({"t": 10.0 + i, "user": "after", "text": f"after {i}"})
        wait_for(browser, "document.querySelectorAll('#chat .msg').length === 5")
        assert shown(browser) == [f"user{i}: <b>before {i}</b>" for i in range(3)] + ["after: after 0", "after: after 1"]
        # A page that connects now gets the new server's backlog only once (no duplicates on reconnect).
        o2.publish({"t": 12.0, "user": "after", "text": "after 2"})
        wait_for(browser, "document.querySelectorAll('#chat .msg').length === 6")
    finally:
        o2.close()
