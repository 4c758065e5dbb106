"""Chat parsing: every real log in ../shared parses with the counts PROVENANCE.md gives, exact
values are spot-checked, and the skip / error / round-trip policy holds on files written here."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from vod2chat.ingest.chat import (
    CHAT_SUFFIXES,
    ChatFormatError,
    Message,
    Skip,
    detect_format,
    parse_chat,
    write_irc,
)

FIXTURES = Path(__file__).resolve().parent / "data" / "chat"
NYMN_FIRST_TS = 1704557984.095  # tmi-sent-ts of the earliest PRIVMSG in the recentmessages file

# file -> (format, messages). Counts from PROVENANCE.md; the edge-case file is 22 lines, all valid.
REAL = {
    "tcd_irc_569086201.txt": ("tcd-irc", 814),
    "tcd_irc_edgecases_sample.txt": ("tcd-irc", 22),
    "v5_rechat_1087079172.json": ("v5-rechat", 3090),
    "v5_rechat_410474822.json.gz": ("v5-rechat", 285),
    "irc_tags_recentmessages_nymn.json": ("irc-tags", 798),
    "chat_downloader_replay_a.json": ("chat-downloader", 19),
    "chat_downloader_replay_b.json": ("chat-downloader", 18),
}


@pytest.fixture(scope="module")
def logs(real_data):
    return {name: parse_chat(real_data / "chat" / name) for name in REAL}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_files_parse_completely(logs, real_data, name):
    fmt, count = REAL[name]
    log = logs[name]
    assert detect_format(real_data / "chat" / name) == fmt
    assert (log.format, len(log.messages), log.skipped) == (fmt, count, [])
    assert [m.t for m in log.messages] == sorted(m.t for m in log.messages)
    assert all(m.user and m.text == m.text.strip() for m in log.messages)
    assert log.summary() == f"{fmt}: {count} messages, 0 skipped" + (
        ", 2 non-message events ignored" if fmt == "irc-tags" else ""
    )


def test_tcd_irc_values(logs):
    big = logs["tcd_irc_569086201.txt"].messages
    assert big[1] == Message(8.0, "ecenti", "Dark times have come: 1) corona 2) black hole feels bad in center of Galaxy 3) js on Tsozin stream")
    assert big[-1] == Message(2 * 3600 + 48 * 60 + 22, "aodhneine", "\\ AYAYA")
    assert len({m.user for m in big}) == 99

    edge = logs["tcd_irc_edgecases_sample.txt"].messages
    assert edge[0] == Message(0.0, "Tsoding", "/me is offline")  # tcd's /me is kept as the action marker
    assert edge[1].text.endswith("monkaTOS")  # trailing space dropped
    assert (edge[2].t, edge[4].t, edge[7].t, edge[8].t) == (1.5, 2.5, 3.6, 3.7)
    assert edge[6] == Message(3.5, "herrhotzenplotz", " ".join(["\U0001F602"] * 10))
    assert edge[8].text == "\U0001F1EF\U0001F1F5 \U0001F469\U0001F3FE ?"
    assert [m.user for m in edge if m.t == 4.0] == ["Tsoding", "igooddoog"]  # stable sort keeps file order


def test_v5_values(logs):
    big = logs["v5_rechat_1087079172.json"].messages
    assert (big[0], big[1]) == (Message(0.0, "DunkoPop", "<3"), Message(3.0, "CarbonSimulator", "lionBaby_TK"))
    assert big[-1] == Message(2922.0, "awowadas", "f1 2021 just came out, play that?")
    assert Message(1358.0, "降霊灯", "alive game") in big  # display_name, not login

    gz = logs["v5_rechat_410474822.json.gz"].messages
    assert gz[1] == Message(0.064, "SchnozeBot", "/me idrisrocks lost 50 points in roulette and now has 177411 points! xqcSmash")
    assert gz[-1] == Message(127.467, "beanstealer", "Jebaited")
    assert sum(m.t != int(m.t) for m in gz) == 276  # fractional offsets survive


def test_irc_tags_values(logs):
    msgs = logs["irc_tags_recentmessages_nymn.json"].messages
    assert logs["irc_tags_recentmessages_nymn.json"].events == 2  # the CLEARCHATs
    assert msgs[0].t == 0.0 and msgs[0].user == "Purple_Geco"
    assert msgs[1] == Message(0.144, "mon_dieud", msgs[1].text)
    assert msgs[-1].t == 451.16 and msgs[-1].user == "Kotzblitz20"
    # A trailing parameter without its ':' is still the text.
    assert Message(0.303, "jontEmillian", "forsenParty") in msgs
    assert Message(144.123, "123homo", "@soran2202 sup dude how are ya") in msgs
    actions = [m for m in msgs if m.text.startswith("/me ")]
    assert len(actions) == 5 and actions[0].user == "botnextdoor" and actions[0].t == 151.848
    assert not any("\U000e0000" in m.text or "\x01" in m.text for m in msgs)


def test_irc_stream_start_shifts_offsets(real_data, logs):
    path = real_data / "chat" / "irc_tags_recentmessages_nymn.json"
    shifted = parse_chat(path, stream_start=NYMN_FIRST_TS - 100).messages
    default = logs["irc_tags_recentmessages_nymn.json"].messages
    assert [m.t for m in shifted] == [round(m.t + 100, 3) for m in default]
    assert (shifted[0].t, shifted[-1].t) == (100.0, 551.16)


def test_chat_downloader_values(logs):
    a = logs["chat_downloader_replay_a.json"].messages
    assert a[:2] == [Message(307.0, "jump3N", "guthenGG"), Message(964.0, "jump3N", "Ey Guthen :)")]
    assert a[-1] == Message(3169.0, "Clallae566", "ni kommer förlora")
    assert logs["chat_downloader_replay_b.json"].messages[-1] == Message(2535.0, "Clallae566", "Aa")


def test_gzip_found_by_magic_bytes(real_data, tmp_path):
    disguised = tmp_path / "410474822.json"  # gzip data without a .gz suffix
    disguised.write_bytes((real_data / "chat" / "v5_rechat_410474822.json.gz").read_bytes())
    assert len(parse_chat(disguised).messages) == 285
    text = tmp_path / "1.txt"
    text.write_bytes(gzip.compress(b"[0:00:01] <a> hi\n[0:00:02] <b> yo\n"))
    assert parse_chat(text).messages == [Message(1.0, "a", "hi"), Message(2.0, "b", "yo")]


def test_twitch_dl_fixture():
    log = parse_chat(FIXTURES / "twitchdl_sample.json")
    assert log.format == "twitch-dl"
    assert log.messages == [
        Message(1.0, "unknown", "from a deleted account"),  # commenter: null
        Message(3.0, "DunkoPop", "hi Kappa"),  # text joined from fragments
        Message(3.0, "降霊灯", "こんにちは"),
        Message(596.0, "lateguy", "gn"),  # empty displayName -> login
    ]
    assert log.skipped == [Skip(str(FIXTURES / "twitchdl_sample.json"), 3, "empty text")]


def test_twitch_dl_graphql_edges_and_bare_list(tmp_path):
    nodes = json.loads((FIXTURES / "twitchdl_sample.json").read_text())["comments"]
    (tmp_path / "edges.json").write_text(json.dumps({"comments": [{"cursor": "x", "node": n} for n in nodes]}))
    (tmp_path / "bare.json").write_text(json.dumps(nodes))
    for name in ("edges.json", "bare.json"):
        assert [m.user for m in parse_chat(tmp_path / name).messages] == ["unknown", "DunkoPop", "降霊灯", "lateguy"]


def test_ass_fixture():
    log = parse_chat(FIXTURES / "tcd_sample.ass")
    assert (log.format, log.skipped) == ("ass", [])
    assert log.messages == [
        Message(1.0, "DunkoPop", "<3"),
        Message(4.5, "oakmrk", "hello, chat, commas stay"),
        Message(65.25, "ecenti", "note: two lines here"),  # override tags gone, \N is a space
        Message(3723.04, "降霊灯", "PogChamp 🎉"),
    ]


def test_raw_irc_text_lines(tmp_path):
    ts = 1_700_000_000_000
    lines = [
        f"@display-name=Some\\sOne;tmi-sent-ts={ts + 2500} :someone!someone@someone.tmi.twitch.tv PRIVMSG #c :hello world",
        f"@tmi-sent-ts={ts + 1000};display-name= :early!early@early.tmi.twitch.tv PRIVMSG #c oneword",
        f"@tmi-sent-ts={ts + 3000};display-name=Act :act!act@act.tmi.twitch.tv PRIVMSG #c :\x01ACTION waves\x01",
        f"@tmi-sent-ts={ts + 4000};msg-id=resub :tmi.twitch.tv USERNOTICE #c :resub text",
        f"@tmi-sent-ts={ts + 5000};display-name=Dup :dup!dup@dup.tmi.twitch.tv PRIVMSG #c :again \U000e0000",
        ":nots!nots@nots.tmi.twitch.tv PRIVMSG #c :no tags, no time",
    ]
    path = tmp_path / "raw.log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log = parse_chat(path)
    assert (log.format, log.events) == ("irc-tags", 1)
    assert log.messages == [
        Message(0.0, "early", "oneword"),  # empty display-name -> nick; first message is t=0
        Message(1.5, "Some One", "hello world"),  # \s unescaped
        Message(2.0, "Act", "/me waves"),
        Message(4.0, "Dup", "again"),
    ]
    assert [(s.line, s.reason.split(" (")[0]) for s in log.skipped] == [(6, "PRIVMSG without a tmi-sent-ts tag")]
    assert parse_chat(path, stream_start=ts / 1000 - 10).messages[0].t == 11.0


def test_malformed_lines_skipped_with_line_numbers(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text(
        "[0:00:01] <a> one\n"
        "[0:00:02] <b> two\n"
        "[0:61:00] <c> bad minutes\n"
        "\n"
        "this is not chat\n"
        "[0:00:03] <d>   \n"
        "[0:00:04.25] <e> four\n",
        encoding="utf-8",
    )
    log = parse_chat(path)
    assert [m.text for m in log.messages] == ["one", "two", "four"]
    assert [(s.path, s.line) for s in log.skipped] == [(str(path), 3), (str(path), 5), (str(path), 6)]
    assert log.skipped[0].reason == "bad timestamp '[0:61:00]'"
    assert log.summary().startswith("tcd-irc: 3 messages, 3 skipped (bad.txt:3 bad timestamp '[0:61:00]', bad.txt:5 ")


def test_mostly_garbage_raises_naming_file_and_line(tmp_path):
    path = tmp_path / "garbage.txt"
    path.write_text("[0:00:01] <a> fine\nnope\n[9:99:99] <b> x\nstill nope\n", encoding="utf-8")
    with pytest.raises(ChatFormatError, match=r"garbage\.txt.*tcd-irc.*3 of 4 lines.*first bad line 2"):
        parse_chat(path)
    assert len(parse_chat(path, max_bad_fraction=0.8).messages) == 1

    nothing = tmp_path / "notes.txt"
    nothing.write_text("\nshopping list\nmilk\n", encoding="utf-8")
    with pytest.raises(ChatFormatError, match=r"notes\.txt.*tried tcd-irc, irc-tags, ass.*line 2: 'shopping list'"):
        parse_chat(nothing)
    with pytest.raises(ChatFormatError, match=r"notes\.txt.*tcd-irc.*first bad line 2"):
        parse_chat(nothing, fmt="tcd-irc")


def test_bad_json_and_unknown_layouts(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"comments": [{"content_offset_seconds": 1,', encoding="utf-8")
    with pytest.raises(ChatFormatError, match=r"broken\.json: invalid JSON at line 1"):
        parse_chat(broken)
    other = tmp_path / "other.json"
    for layout in ('{"comments": []}', '{"foo": 1}', "[1, 2]"):
        other.write_text(layout, encoding="utf-8")
        with pytest.raises(ChatFormatError, match=r"other\.json.*tried v5-rechat"):
            parse_chat(other)
    with pytest.raises(ValueError, match="unknown chat format"):
        parse_chat(other, fmt="srt")


def test_chat_downloader_modern_shape(tmp_path):
    path = tmp_path / "cd.json"
    path.write_text(json.dumps([
        {"author": {"name": "a_login", "display_name": "A"}, "message": "hey", "time_in_seconds": 1.25},
        {"action_type": "ban_user", "author": {"name": "x"}, "time_in_seconds": 2.0},
        {"author": {"name": "b"}, "message": "yo", "time_in_seconds": 0.5},
    ]))
    log = parse_chat(path)
    assert (log.format, log.events) == ("chat-downloader", 1)
    assert log.messages == [Message(0.5, "b", "yo"), Message(1.25, "A", "hey")]


def test_write_irc_round_trip(tmp_path, logs):
    for name in ("v5_rechat_410474822.json.gz", "irc_tags_recentmessages_nymn.json", "tcd_irc_edgecases_sample.txt"):
        msgs = logs[name].messages
        out = tmp_path / f"{name}.irc"
        write_irc(msgs, out)
        assert parse_chat(out).messages == msgs
    odd = [Message(1.5, "a", "x"), Message(127.467, "b", "line\nbreak"), Message(10102.0, "c", "u\u2028v")]
    write_irc(odd, out)
    assert out.read_text(encoding="utf-8").split("\n") == [
        "[0:00:01.50] <a> x", "[0:02:07.467] <b> line break", "[2:48:22] <c> u\u2028v", ""]
    assert parse_chat(out).messages[2] == odd[2]  # U+2028 is not a line break in a chat log
    with pytest.raises(ValueError, match="cannot write"):
        write_irc([Message(-1.0, "a", "x")], out)


def test_write_json_round_trip(tmp_path, logs):
    """What generate writes is a chat format this module reads back: every format it writes, it reads."""
    from vod2chat.ingest.chat import write_json

    for name in ("v5_rechat_410474822.json.gz", "irc_tags_recentmessages_nymn.json", "tcd_irc_edgecases_sample.txt"):
        msgs = logs[name].messages
        out = tmp_path / f"{name}.vod2chat.json"
        write_json(msgs, out)
        back = parse_chat(out)
        assert back.format == "vod2chat" and back.messages == msgs
    out.write_text('[{"t": "x", "user": "a", "text": "b"}, {"t": 1.0, "user": "a", "text": "ok"}]')
    log = parse_chat(out, max_bad_fraction=0.6)
    assert log.messages == [Message(1.0, "a", "ok")] and len(log.skipped) == 1


def test_chat_suffixes():
    assert {".txt", ".irc", ".log", ".json", ".gz", ".ass"} <= set(CHAT_SUFFIXES)
    assert "x.json.gz".endswith(CHAT_SUFFIXES)
