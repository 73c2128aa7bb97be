"""What an operator reads: ``list``, ``info`` and ``status`` as tables, and the progress line's rate.

Pure: each function takes the JSON the node sent (and a width) and returns text, so the same
screens come out of the ``p2ptorrent`` CLI and a node's stdin, and golden tests pin them.
One unit system everywhere: binary (KiB, MiB, MiB/s).  rich lays out the tables to fit the
width (a name too long is cut with an ellipsis, never wrapped); humanize writes sizes and
ETAs.  Both are imported inside the functions: the CLI must start fast (tests/test_cli_fast.py).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

#: Width of the tables a node prints on its stdin (it has no terminal to ask), unless $COLUMNS says.
NODE_COLUMNS = 100
#: Columns a name and a state need at least, before the least needed columns of a table are left out.
FLEXIBLE_ROOM = 24
#: Below this width, the least needed columns of ``info``'s peers are left out rather than squeezed.
NARROW = 80
#: Seconds a rate is averaged over in the progress line (an exponential moving average).
RATE_SMOOTHING = 5.0


def size(n: Any) -> str:
    """``1.5 MiB``; ``-`` for a missing value."""
    if not _is_number(n):
        return "-"
    import humanize

    text = str(humanize.naturalsize(n, binary=True, format="%.1f"))
    # humanize spells small sizes out ("100 Bytes"); the symbol keeps the columns short.
    return text.replace(" Bytes", " B").replace(" Byte", " B")


def rate(n: Any) -> str:
    """``1.5 MiB/s``; ``-`` for a missing value, ``0`` for none."""
    if not _is_number(n):
        return "-"
    return "0" if n <= 0 else f"{size(n)}/s"


def eta(left: Any, per_second: Any) -> str:
    """How long *left* bytes take at *per_second*: ``2 minutes``; ``-`` when nothing comes in."""
    if not _is_number(left) or not _is_number(per_second) or per_second <= 0:
        return "-"
    if left <= 0:
        return "done"
    import humanize

    return str(humanize.naturaldelta(left / per_second))


def percent(done: Any, total: Any) -> str:
    if not _is_number(done) or not _is_number(total):
        return "-"
    if total <= 0:
        return "100%"
    # Floor, so 99.96% is not shown as a finished 100%.
    return f"{int(1000 * done / total) / 10:.1f}%" if done < total else "100%"


def ratio(uploaded: Any, total: Any) -> str:
    """Uploaded over the file's size, as transmission shows it; ``-`` when unknown."""
    if not _is_number(uploaded) or not _is_number(total) or total <= 0:
        return "-"
    return f"{uploaded / total:.2f}"


def short_hash(info_hash: Any) -> str:
    return str(info_hash)[:8] if isinstance(info_hash, str) else "-"


def _left(done: Any, total: Any) -> float | None:
    return float(total - done) if _is_number(total) and _is_number(done) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _console(width: int) -> Any:
    from rich.console import Console

    # No colour, no markup, no terminal codes: the same bytes on a terminal, a pipe and in a test.
    return Console(file=io.StringIO(), width=max(20, width), color_system=None, force_terminal=False,
                   no_color=True, highlight=False, markup=False, emoji=False, soft_wrap=False)


def _text(console: Any, *renderables: Any) -> str:
    for each in renderables:
        console.print(each)
    out: str = console.file.getvalue()
    return "\n".join(line.rstrip() for line in out.splitlines())


def _table(**kwargs: Any) -> Any:
    from rich import box
    from rich.table import Table

    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True,
                 **kwargs)


def _fixed_width(columns: dict[str, list[str]], flexible: tuple[str, ...]) -> int:
    """The width the columns other than *flexible* take, with the gaps between all of them."""
    return sum(max(len(k), *map(len, c)) for k, c in columns.items() if k not in flexible) + 2 * (len(columns) - 1)


def _columns(table: Any, columns: dict[str, list[str]], flexible: tuple[str, ...], width: int,
             left: tuple[str, ...] = ()) -> None:
    """Add *columns* to *table*, fitting *width*: all but the *flexible* ones are as wide as their cells
    (cut, they would say nothing); the flexible ones share the rest, each cut with "…" when too long."""
    wide = {key: max(len(key), *map(len, cells)) for key, cells in columns.items()}
    room = width - _fixed_width(columns, flexible)
    given: dict[str, int] = {}
    # The narrowest first: what it leaves goes to the next.
    for i, key in enumerate(sorted(flexible, key=lambda k: wide[k])):
        share = max(room // (len(flexible) - i), 0)
        given[key] = max(min(wide[key], share), min(8, wide[key]))
        room -= given[key]
    for key in columns:
        if key in flexible:
            table.add_column(key, no_wrap=True, overflow="ellipsis", width=given[key])
        else:
            table.add_column(key, justify="left" if key in left else "right", no_wrap=True, width=wide[key])
    for i in range(len(next(iter(columns.values())))):
        table.add_row(*(cells[i] for cells in columns.values()))


# ---- list

def render_list(answer: dict[str, Any], width: int) -> str:
    """``list``: one row per transfer, like ``transmission-remote -l``, and a line of totals.

    When the width leaves less than FLEXIBLE_ROOM for the name and the state, the hash, upload
    rate, ratio and peers are left out and only the bytes held are shown; what still does not
    fit is the name and the state, cut with "…".
    """
    rows = [r for r in answer.get("transfers", []) if isinstance(r, dict)]
    if not rows:
        return "no transfers: `send FILE` to seed one, `download TORRENT` to fetch one"
    columns: dict[str, list[str]] = {key: [] for key in
                                     ("ID", "Name", "Done", "Have / Size", "ETA", "Down", "Up", "Ratio", "Peers",
                                      "State")}
    for r in rows:
        done, total = r.get("done"), r.get("total")
        left = _left(done, total)
        columns["ID"].append(short_hash(r.get("info_hash")))
        columns["Name"].append(str(r.get("name", "?")))
        columns["Done"].append(percent(done, total))
        columns["Have / Size"].append(f"{size(done)} / {size(total)}")
        columns["ETA"].append(eta(left, r.get("download_rate")) if r.get("state") == "downloading" else "-")
        columns["Down"].append(rate(r.get("download_rate")))
        columns["Up"].append(rate(r.get("upload_rate")))
        columns["Ratio"].append(ratio(r.get("uploaded"), total))
        columns["Peers"].append(str(r.get("peers", 0)))
        columns["State"].append(str(r.get("state", "?")))
    if _fixed_width(columns, ("Name", "State")) + FLEXIBLE_ROOM > width:
        columns = {"Name": columns["Name"], "Done": columns["Done"], "Have": [size(r.get("done")) for r in rows],
                   "ETA": columns["ETA"], "Down": columns["Down"], "State": columns["State"]}
    table = _table()
    _columns(table, columns, ("Name", "State"), width, left=("ID",))
    down = sum(r.get("download_rate") or 0 for r in rows if _is_number(r.get("download_rate")))
    up = sum(r.get("upload_rate") or 0 for r in rows if _is_number(r.get("upload_rate")))
    plural = "" if len(rows) == 1 else "s"
    totals = f"{len(rows)} transfer{plural}; down {rate(down)}, up {rate(up)}"
    return _text(_console(width), table, totals)


# ---- info

def render_info(answer: dict[str, Any], width: int) -> str:
    """``info``: one transfer's details, then its peers."""
    t = answer.get("transfer") if isinstance(answer.get("transfer"), dict) else answer
    assert isinstance(t, dict)
    done, total = t.get("done"), t.get("total")
    left = _left(done, total)
    details = _table(show_header=False)
    details.add_column(no_wrap=True)
    details.add_column(overflow="fold")
    pieces = f"{t['pieces']} of {t['pieces_total']}" if _is_number(t.get("pieces")) else "-"
    for key, value in (
        ("Name", t.get("name")),
        ("Info hash", t.get("info_hash")),
        ("State", t.get("state")),
        ("Detail", t.get("detail") if t.get("detail") != t.get("state") else None),
        ("Files", t.get("files")),
        ("Done", f"{percent(done, total)} ({size(done)} of {size(total)}; pieces {pieces})"),
        ("ETA", eta(left, t.get("download_rate")) if t.get("state") == "downloading" else "-"),
        ("Rates", f"down {rate(t.get('download_rate'))}, up {rate(t.get('upload_rate'))}"),
        ("Uploaded", f"{size(t.get('uploaded'))} (ratio {ratio(t.get('uploaded'), total)})"),
        ("Resumed", size(t.get("resumed_bytes")) if t.get("resumed_bytes") else None),
        ("Tracker", t.get("tracker")),
        ("Path", t.get("path")),
        ("Torrent", t.get("torrent")),
    ):
        if value not in (None, ""):
            details.add_row(key, str(value))
    peers = [p for p in t.get("peer_details", []) if isinstance(p, dict)]
    if not peers:
        return _text(_console(width), details, "no peers")
    columns: dict[str, list[str]] = {key: [] for key in
                                     ("Node", "Address", "Has", "Choked", "From", "To", "Bytes", "Verified")}
    for p in peers:
        columns["Node"].append(str(p.get("node_id", "?")))
        columns["Address"].append(str(p.get("address", "?")))
        columns["Has"].append("complete" if p.get("complete") else f"{p.get('pieces', 0)} pieces")
        columns["Choked"].append("yes" if p.get("choked_us") else "no")
        columns["From"].append(rate(p.get("rate_from")))
        columns["To"].append(rate(p.get("rate_to")))
        columns["Bytes"].append(size(p.get("bytes_from")))
        columns["Verified"].append(str(p.get("pieces_from", 0)))
    if width < NARROW:
        del columns["Verified"], columns["To"]
    table = _table(title="Peers", title_justify="left")
    _columns(table, columns, ("Address",), width, left=("Choked",))
    return _text(_console(width), details, "", table)


# ---- status

def render_status(status: dict[str, Any], width: int) -> str:
    """``status``: the node in a few lines (the transfers are ``list``'s)."""
    details = _table(show_header=False)
    details.add_column(no_wrap=True)
    details.add_column(overflow="fold")
    if status.get("registered"):
        tracker = f"{status.get('tracker')} (registered)"
    else:
        tracker = f"{status.get('tracker')} (not registered: {status.get('tracker_problem') or 'no answer yet'})"
    downloading = [d for d in status.get("downloading", []) if isinstance(d, dict)]
    seeding = [s for s in status.get("seeding", []) if isinstance(s, dict)]
    down = sum(d.get("download_rate") or 0 for d in downloading if _is_number(d.get("download_rate")))
    up = status.get("upload_rate")
    datagrams: dict[str, Any] = status["datagrams"] if isinstance(status.get("datagrams"), dict) else {}
    rows = [
        ("Node", f"{status.get('node_id')} on UDP port {status.get('udp_port')}"),
        ("Folder", status.get("folder")),
        ("Tracker", tracker),
        *[("Also", f"{t.get('tracker')} ({'registered' if t.get('registered') else 'not registered'})")
          for t in status.get("trackers", []) if isinstance(t, dict)],
        ("Pending", f"{status.get('pending_announcements')} announcements not acknowledged yet"
         if status.get("pending_announcements") else None),
        ("Seeding", f"{len(seeding)} ({size(sum(s.get('length') or 0 for s in seeding))})"),
        ("Downloading", f"{len(downloading)}"),
        ("Held", f"{len(status.get('held', []))} paused or cancelled" if status.get("held") else None),
        ("Rates", f"down {rate(down)}, up {rate(up)}"),
        ("Limits", _limits(status.get("limits"))),
        ("Upload slots", ", ".join(map(str, status.get("upload_slots", []))) or "none in use"),
        ("Datagrams", f"{datagrams.get('received', 0)} received, {datagrams.get('sent', 0)} sent"),
    ]
    for key, value in rows:
        if value not in (None, ""):
            details.add_row(key, str(value))
    return _text(_console(width), details)


def _limits(limits: Any) -> str | None:
    """``up 20.0 MiB/s, down none`` (MAX_UPLOAD_RATE, MAX_DOWNLOAD_RATE or ``limit``; 0 is none)."""
    if not isinstance(limits, dict):
        return None
    return ", ".join(f"{way} {rate(limits.get(key)) if limits.get(key) else 'none'}"
                     for way, key in (("up", "upload"), ("down", "download")))


# ---- the progress line

@dataclass
class RateAverage:
    """The download rate the progress line shows: an exponential moving average of what was seen.

    It starts at the second report seen, so a client attaching to a download half done
    does not count the bytes fetched before it came as fetched in its first instant.
    """

    smoothing: float = RATE_SMOOTHING
    _last: tuple[float, int] | None = None
    value: float | None = None

    def seen(self, now: float, done: int) -> float | None:
        """A report of *done* bytes at *now*; the rate so far (None until two reports)."""
        if self._last is None or done < self._last[1]:
            self._last = (now, done)
            return self.value
        then, before = self._last
        elapsed = now - then
        if elapsed <= 0:
            return self.value
        instant = (done - before) / elapsed
        self._last = (now, done)
        if self.value is None:
            self.value = instant
        else:
            import math

            weight = 1 - math.exp(-elapsed / self.smoothing)
            self.value += weight * (instant - self.value)
        return self.value


def progress_text(done: int, total: int | None, per_second: float | None, peers: Any) -> str:
    """The words after the bar: ``12.0 MiB / 100.0 MiB, 1.5 MiB/s, ETA 2 minutes, 3 peers``."""
    parts = [f"{size(done)} / {size(total)}" if total else size(done)]
    parts.append(rate(per_second) if per_second is not None else "- /s")
    if total:
        parts.append(f"ETA {eta(total - done, per_second)}")
    if _is_number(peers):
        parts.append(f"{peers} peer" + ("" if peers == 1 else "s"))
    return ", ".join(parts)
