"""The chat exports people have: TwitchDownloader text and HTML, chat-downloader JSON lines and
CSV. Fixtures are written here in the shapes those tools write (TwitchDownloaderCore ChatText.cs /
ChatHtml.cs, chat_downloader/output/continuous_write.py with its '.'-joined flattened columns),
with exact counts, the same malformed-line policy as the other formats, and detection errors
that say what was tried."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from vod2chat.ingest.chat import CHAT_SUFFIXES, ChatFormatError, Message, detect_format, parse_chat
from vod2chat.ingest.worker import split_name

UTC0 = 1672574400.0  # 2023-01-01 12:00:00 UTC


def test_td_text_relative_hours_past_24_names_and_multiline(tmp_path):
    path = tmp_path / "td.txt"
    path.write_text(
        "[0:00:05] Alice: hello there\n"
        "[0:00:07] Mister Bob: a display name with a space: and a colon in the text\n"
        "[0:01:02] 日本語の名前: こんにちは\n"
        "[0:02:00] Carol: first line of a message\n"
        "second line of the same message\n"
        "[25:00:01] Dave: hours keep counting past 24\n"
        "[100:59:59] Eve: /me waves\n",
        encoding="utf-8")
    assert detect_format(path) == "twitchdownloader-txt"
    log = parse_chat(path)
    assert (log.format, log.skipped, log.note) == ("twitchdownloader-txt", [], "")
    assert log.messages == [
        Message(5.0, "Alice", "hello there"),
        Message(7.0, "Mister Bob", "a display name with a space: and a colon in the text"),
        Message(62.0, "日本語の名前", "こんにちは"),
        Message(120.0, "Carol", "first line of a message\nsecond line of the same message"),
        Message(90001.0, "Dave", "hours keep counting past 24"),
        Message(363599.0, "Eve", "/me waves"),
    ]


def test_td_text_utc_offsets_from_first_message_or_stream_start(tmp_path):
    path = tmp_path / "utc.txt"
    path.write_text(
        "[2023-01-01 12:00:05 UTC] Alice: hello there\n"
        "[2023-01-01 12:00:07.250 UTC] Bob: the .fff variant\n"
        "[2023-01-01 13:00:05 UTC] Carol: an hour later\n",
        encoding="utf-8")
    log = parse_chat(path)
    assert [m.t for m in log.messages] == [0.0, 2.25, 3600.0]
    assert "t=0 is the first message" in log.summary() and "--stream-start" in log.summary()
    aligned = parse_chat(path, stream_start=UTC0)
    assert [m.t for m in aligned.messages] == [5.0, 7.25, 3605.0] and aligned.note == ""


def test_td_text_malformed_lines_policy(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text(
        "stray line before any message\n"
        "[0:00:01] a: one\n"
        "[0:61:00] b: bad minutes\n"
        "[0:00:02] c: two\n"
        "[2023-13-01 12:00:00 UTC] d: no 13th month\n"
        "[0:00:03] e:    \n"
        "[0:00:04] f: four\n"
        "[0:00:05] g: five\n",
        encoding="utf-8")
    log = parse_chat(path)
    assert [m.text for m in log.messages] == ["one", "two", "four", "five"]
    assert [s.line for s in log.skipped] == [1, 3, 5, 6]
    assert log.skipped[1].reason == "bad timestamp '[0:61:00]'"
    path.write_text("[0:00:01] a: fine\n[0:99:00] b: x\n[0:98:00] c: y\n", encoding="utf-8")
    with pytest.raises(ChatFormatError, match=r"bad\.txt: read as twitchdownloader-txt, 2 of 3 lines malformed"):
        parse_chat(path)


def test_td_text_without_timestamps_is_refused_saying_why(tmp_path):
    path = tmp_path / "none.txt"
    path.write_text("Alice: hello there\nBob: hi\nCarol Smith: no times here\n", encoding="utf-8")
    with pytest.raises(ChatFormatError) as e:
        parse_chat(path)
    msg = str(e.value)
    assert "none.txt" in msg and "without timestamps" in msg and "no times to align" in msg
    assert "JSON" not in msg.split(";")[0]


@pytest.mark.parametrize("first", ["[0:00:05] Alice: hello there", "[2023-01-01 12:00:05 UTC] Alice: hello there"])
def test_td_text_starting_with_bracket_is_not_json(tmp_path, first):
    path = tmp_path / "1.txt"
    path.write_text(first + "\n", encoding="utf-8")
    assert parse_chat(path).messages[0].text == "hello there"
    path.write_text("[not a stamp] but also not JSON\n", encoding="utf-8")
    with pytest.raises(ChatFormatError) as e:
        parse_chat(path)
    assert "invalid JSON" not in str(e.value)
    assert "tried tcd-irc, irc-tags, ass, twitchdownloader-txt, twitchdownloader-html" in str(e.value)
    assert "first line 1: '[not a stamp] but also not JSON'" in str(e.value)


def _td_html(comments: list[tuple[str, str, str | None, str]], link: bool) -> str:
    """A TwitchDownloader HTML export: its template's head with embedded emote CSS, then one
    <pre class="comment-root"> per comment as ChatHtml.cs writes them."""
    head = ["<!DOCTYPE html>", "<html>", "<head>", "<title>", "12345", "</title>", "<style>"]
    head += [f'.first-{i} {{ content:url("data:image/png;base64, iVBORw0KGgo="); }}' for i in range(250)]
    head += ["</style>", "<script>document.title = 'never run';</script>", "</head>", "<body>"]
    rows = []
    for stamp, user, color, body in comments:
        ts = f'<a href="https://www.twitch.tv/videos/12345?t=0h0m5s">{stamp}</a>' if link else stamp
        badge = ('<img width="auto" height="18px" class="emote-image badge-subscriber-12" title="subscriber"">'
                 '<div class="invis-text">subscriber</div>')
        style = f' style="color: {color}"' if color else ""
        rows.append(f'<pre class="comment-root">[{ts}] {badge} <a href="https://www.twitch.tv/{user.lower()}" '
                    f'target="_blank"><span class="comment-author"{style}>{user}</span></a>'
                    f'<span class="comment-message">: {body}</span></pre>')
    return "\n".join(head + rows + ["</body>", "</html>", ""])


@pytest.mark.parametrize("encoding,link", [("utf-16", False), ("utf-8", True)])
def test_td_html(tmp_path, encoding, link):
    kappa = ('<img width="auto" height="32px" class="emote-image first-25" title="Kappa">'
             '<div class="invis-text">Kappa</div> ')
    comments = [("0:00:05", "Alice", "#FF0000", "hello there "),
                ("0:00:09", "Bob", None, f"nice {kappa}one "),
                ("1:02:03", "日本語 (nihongo)", "#00FF00", "&lt;script&gt;alert(1)&lt;/script&gt; "),
                ("0:00:07", "Carol", None, "  "),  # an empty message: malformed
                ("soon", "Dave", None, "no stamp ")]  # no stamp: malformed
    path = tmp_path / "12345.html"
    path.write_bytes(_td_html(comments, link).encode(encoding))  # utf-16 writes a BOM, as .NET's Encoding.Unicode
    assert detect_format(path) == "twitchdownloader-html"
    log = parse_chat(path)
    assert log.messages == [Message(5.0, "Alice", "hello there"), Message(9.0, "Bob", "nice Kappa one"),
                            Message(3723.0, "日本語 (nihongo)", "<script>alert(1)</script>")]
    assert [s.reason.split(":")[0] for s in log.skipped] == ["empty user or text", "comment without a [h"]
    assert all(s.line > 250 for s in log.skipped)  # lines of the file, past the long head


def test_html_without_comments_is_named(tmp_path):
    path = tmp_path / "page.html"
    path.write_text("<!DOCTYPE html>\n<html><body><p>hi</p></body></html>\n", encoding="utf-8")
    with pytest.raises(ChatFormatError, match=r"page\.html: an HTML page without TwitchDownloader"):
        parse_chat(path)


def _cd_records() -> list[dict]:
    """chat-downloader's Twitch records (sorted keys, as its writers dump them)."""
    author = lambda name, disp, colour: {"badges": [{"name": "subscriber", "title": "Subscriber", "version": 3}],  # noqa: E731
                                         "colour": colour, "display_name": disp, "id": "1234", "name": name}
    return [
        {"author": author("alice", "Alice", "#FF0000"), "message": "hello there", "message_id": "a1",
         "message_type": "text_message", "time_in_seconds": 5.12, "time_text": "0:05", "timestamp": 1672574405120000},
        {"action_type": "ban_user", "author": {"name": "spammer"}, "message_type": "ban_user",
         "time_in_seconds": 6.0, "time_text": "0:06", "timestamp": 1672574406000000},
        {"author": author("bob", "Bob", None), "message": "hi, \"quoted\"\nand two lines", "message_id": "b1",
         "message_type": "text_message", "time_in_seconds": 3.5, "time_text": "0:03", "timestamp": 1672574403500000},
        {"author": author("carol", "Carol", "#00FF00"), "message": "no time", "message_id": "c1",
         "message_type": "text_message", "time_text": "0:07", "timestamp": 1672574407000000},
    ]


def test_chat_downloader_jsonl(tmp_path):
    path = tmp_path / "cd.jsonl"
    lines = [json.dumps(r, sort_keys=True) for r in _cd_records()]
    path.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n", encoding="utf-8")
    assert detect_format(path) == "chat-downloader-jsonl"
    log = parse_chat(path)
    assert log.messages == [Message(3.5, "Bob", 'hi, "quoted"\nand two lines'), Message(5.12, "Alice", "hello there")]
    assert log.events == 1
    assert [(s.line, s.reason.split(" (")[0]) for s in log.skipped] == [
        (3, "invalid JSON"), (5, "no numeric time_in_seconds")]
    one = tmp_path / "one.jsonl"
    one.write_text(lines[0] + "\n", encoding="utf-8")
    assert parse_chat(one).messages == [Message(5.12, "Alice", "hello there")]


def _flatten(item, prefix=""):
    """chat-downloader's flatten_json: nested keys joined with '.', list items by index."""
    if isinstance(item, dict):
        return {k2: v2 for k, v in item.items() for k2, v2 in _flatten(v, f"{prefix}{k}.").items()}
    if isinstance(item, list):
        return {k2: v2 for i, v in enumerate(item) for k2, v2 in _flatten(v, f"{prefix}{i}.").items()}
    return {prefix[:-1]: item}


def test_chat_downloader_csv(tmp_path):
    rows = [_flatten(r) for r in _cd_records()]
    cols = sorted({k for r in rows for k in r})
    path = tmp_path / "cd.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        f.write("too,many," + ",".join("x" for _ in cols) + "\n")
    assert detect_format(path) == "chat-downloader-csv"
    log = parse_chat(path)
    assert log.messages == [Message(3.5, "Bob", 'hi, "quoted"\nand two lines'), Message(5.12, "Alice", "hello there")]
    assert log.events == 1
    assert [s.reason.split(" (")[0] for s in log.skipped] == ["no numeric time_in_seconds",
                                                              f"more fields than the header's {len(cols)}"]


def test_unknown_text_names_every_format_tried_and_first_line(tmp_path):
    path = tmp_path / "x.log"
    path.write_text("\n\nDear diary,\ntoday nothing\n", encoding="utf-8")
    with pytest.raises(ChatFormatError) as e:
        parse_chat(path)
    msg = str(e.value)
    for fmt in ("tcd-irc", "irc-tags", "ass", "twitchdownloader-txt", "twitchdownloader-html",
                "chat-downloader-jsonl", "chat-downloader-csv"):
        assert fmt in msg
    assert "first line 3: 'Dear diary,'" in msg and "invalid JSON" not in msg


def test_new_endings_pair_with_videos():
    for ending in (".txt", ".html", ".jsonl", ".csv"):
        assert ending in CHAT_SUFFIXES
        assert split_name(f"2424877187{ending}") == ("2424877187", "chat")
        assert split_name(f"2424877187{ending}.gz") == ("2424877187", "chat")


def test_real_chat_written_as_twitchdownloader_text_and_html_reads_back(real_data, tmp_path):
    """The real v5/TwitchDownloader JSON written out by ChatText.cs's and ChatHtml.cs's rules
    (relative h:mm:ss of the offset, truncated; display name; body) reads back message for message."""
    import html
    import math

    src = json.loads((real_data / "chat/v5_rechat_1087079172.json").read_text(encoding="utf-8"))
    want = parse_chat(real_data / "chat/v5_rechat_1087079172.json").messages
    rows = []
    for c in src["comments"]:
        s = math.floor(c["content_offset_seconds"])
        rows.append((f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}", c["commenter"]["display_name"],
                     c["message"]["body"]))
    txt = tmp_path / "1087079172.txt"
    txt.write_text("".join(f"[{st}] {name}: {body}\n" for st, name, body in rows), encoding="utf-8")
    page = tmp_path / "1087079172.html"
    page.write_bytes(_td_html([(st, html.escape(n), None, html.escape(b) + " ") for st, n, b in rows],
                              link=False).encode("utf-16"))
    for path, fmt in ((txt, "twitchdownloader-txt"), (page, "twitchdownloader-html")):
        log = parse_chat(path)
        assert (log.format, len(log.messages), log.skipped) == (fmt, len(want), [])
        assert sorted((m.user, m.text) for m in log.messages) == sorted((m.user, " ".join(m.text.split()) if
                                                                         fmt.endswith("html") else m.text)
                                                                        for m in want)
        assert [m.t for m in log.messages] == sorted(float(math.floor(m.t)) for m in want)


@pytest.mark.parametrize("name", ["chat_downloader_replay_a.json", "chat_downloader_replay_b.json"])
def test_real_chat_downloader_records_as_jsonl_and_csv_read_back(real_data, tmp_path, name):
    """The real chat-downloader records, written as its JSON-lines and CSV writers would."""
    recs = json.loads((real_data / "chat" / name).read_text(encoding="utf-8"))
    want = parse_chat(real_data / "chat" / name)
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs), encoding="utf-8")
    rows = [_flatten(r) for r in recs]
    cols = sorted({k for r in rows for k in r})
    table = tmp_path / "x.csv"
    with table.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    for path in (jsonl, table):
        log = parse_chat(path)
        assert (log.messages, log.skipped, log.events) == (want.messages, [], want.events), path.suffix
