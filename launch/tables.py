"""Tables the commands print."""

from __future__ import annotations

from vod2chat.shards.store import Store, chat_counts, chat_warning


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def store_table(url: str) -> str:
    store = Store(url)
    rows = store.summary()
    # messages: kept in the store; dropped: outside their video; malformed: unparseable lines skipped.
    head = (f"{'streamer':<20} {'vods':>5} {'hours':>8} {'messages':>9} {'dropped':>8} {'malformed':>9} "
            f"{'segments':>9} {'shards':>6} {'bytes':>10}")
    lines = [head, "-" * len(head)]
    keys = ("vods", "hours", "messages", "dropped", "malformed", "segments", "shards", "bytes", "low_chat")
    tot = dict.fromkeys(keys, 0.0)

    def row(name: str, r: dict[str, float]) -> str:
        return (f"{name:<20} {r['vods']:>5.0f} {r['hours']:>8.3f} {r['messages']:>9.0f} {r.get('dropped', 0):>8.0f} "
                f"{r.get('malformed', 0):>9.0f} {r['segments']:>9.0f} {r['shards']:>6.0f} {_human_bytes(r['bytes']):>10}")

    for name, r in rows.items():
        lines.append(row(name, r))
        for k in tot:
            tot[k] += r.get(k, 0)
    lines.append(row("total", tot))
    if rows:  # the encoders' precision: one per store, what `ingest --precision auto` continues with
        lines.append(f"precision: {store.precision()}")
    if tot["low_chat"]:  # name them: a VOD that kept little of its chat trains on silence
        for rec in store.records():
            w = chat_warning(rec.name, **chat_counts(rec), duration=rec.duration)
            if w:
                lines.append(f"WARNING {w}")
    return "\n".join(lines)
