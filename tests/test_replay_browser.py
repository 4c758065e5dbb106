"""The HTML replay page in a real browser: headless Chromium plays the video (muted) and the
chat column shows exactly the messages whose t <= video.currentTime, while playing and after
seeking forward and back.

Chromium is driven over the DevTools protocol (tests/browser.py), so the test needs nothing
beyond the standard library. Skipped when no Chromium is installed (Debian: apt-get install -y chromium).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from browser import CHROMIUM, NO_CHROMIUM, Browser
from vod2chat.ingest.chat import Message
from vod2chat.inference.replay import write_html

pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)]


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
