"""The operator's verbs on real nodes and a real tracker, in one reactor over loopback: pause, resume,
cancel, stop-seeding and remove; what the tracker holds after each, what stays on disk, and what a
restarted node does with it.  A seeder that serves only the first pieces (gates.share_only) holds each
download mid-way for as long as the test looks, however fast the machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.python.failure import Failure

from gates import share_only
from p2ptorrent.metainfo import read_torrent
from p2ptorrent.node.operator import (
    CANCELLED, DOWNLOADING, PAUSED, SEEDING, DeleteData, ForgetPartial, Halt, Hold, NotFound, Nothing, Refused, Start,
    Unshare, UploadMeter, Withdraw, find, job_state, plan,
)
from p2ptorrent.node.service import CommandFailed, Node
from test_loopback import Cluster, _file, _registered, _seeders, _until

MIB = 1024 * 1024
SIZE = 12 * MIB


# ---- pure decisions

def test_a_name_a_hash_or_a_unique_prefix_names_a_torrent() -> None:
    a, b, c = bytes.fromhex("ab" * 20), bytes.fromhex("abcd" + "00" * 18), bytes.fromhex("12" * 20)
    known = [(a, "big.bin"), (b, "other.bin"), (c, "abcd")]
    assert find("big.bin", known) == a
    assert find("ab" * 20, known) == a
    assert find("1212", known) == c
    assert find("abcd", known) == c  # a name wins over a prefix
    with pytest.raises(NotFound, match="'abcd0' starts 2 info hashes"):
        find("abcd0", known + [(bytes.fromhex("abcd01" + "00" * 18), "x")])
    with pytest.raises(NotFound, match="no torrent named 'nope'"):
        find("nope", known)
    with pytest.raises(NotFound, match="no torrent"):
        find("ab", known)  # too short a prefix to mean anything
    with pytest.raises(NotFound, match="2 torrents are named"):
        find("dup", [(a, "dup"), (c, "dup")])


def test_each_verb_plans_its_actions_in_order_from_where_the_torrent_is() -> None:
    assert plan("pause", DOWNLOADING, "x") == [Halt("x: paused by the operator"), Hold(PAUSED), Withdraw()]
    assert plan("pause", PAUSED, "x") == [Nothing("x is paused already")]
    assert plan("pause", CANCELLED, "x") == [Hold(PAUSED)]
    assert plan("resume", PAUSED, "x") == plan("resume", CANCELLED, "x") == [Start()]
    assert plan("resume", DOWNLOADING, "x") == [Nothing("x is not paused: it is downloading")]
    assert plan("cancel", DOWNLOADING, "x") == [Halt("x: cancelled by the operator"), Withdraw(), Hold(CANCELLED)]
    assert plan("cancel", PAUSED, "x", delete=True) == [Withdraw(), ForgetPartial(keep_pieces=False)]
    # A seeded file is withdrawn before it stops being served; a download is stopped before it is withdrawn.
    assert plan("stop-seeding", SEEDING, "x") == [Withdraw(), Unshare()]
    assert plan("remove", SEEDING, "x") == [Withdraw(), Unshare()]
    assert plan("remove", SEEDING, "x", delete=True) == [Withdraw(), Unshare(), DeleteData()]
    assert plan("remove", DOWNLOADING, "x") == [Halt("x: removed by the operator"), Withdraw(),
                                               ForgetPartial(keep_pieces=True)]
    assert plan("remove", CANCELLED, "x", delete=True) == [Withdraw(), ForgetPartial(keep_pieces=False)]
    for verb, where in (("pause", SEEDING), ("cancel", SEEDING), ("stop-seeding", DOWNLOADING),
                        ("stop-seeding", PAUSED)):
        with pytest.raises(Refused):
            plan(verb, where, "x")


def test_a_pending_withdrawal_is_kept_on_disk_and_a_newer_own_replaces_it(tmp_path: Path) -> None:
    from p2ptorrent.node.outbox import Outbox

    path = tmp_path / ".outbox.json"
    box = Outbox(path)
    box.add_own("aa" * 20, "a.bin", 10)
    box.add_withdraw("aa" * 20, "paused")  # the OWN not sent yet is dropped: withdrawn instead
    assert (box.owns, box.withdraws, len(box)) == ({}, {"aa" * 20: "paused"}, 1)
    assert Outbox(path).withdraws == {"aa" * 20: "paused"}  # the reason too, for the tracker's event
    box.add_own("aa" * 20, "a.bin", 10)  # shared again: announced, not withdrawn
    assert box.withdraws == {} and Outbox(path).withdraws == {}
    path.write_text('{"withdraw": ["cc' + "cc" * 19 + '"]}')  # written before withdrawals had reasons
    assert Outbox(path).withdraws == {"cc" * 20: ""}
    box.add_withdraw("bb" * 20)
    box.withdraw_done("bb" * 20)
    box.own_done("aa" * 20)
    assert len(box) == 0 and not path.exists()


def test_upload_rates_need_two_marks_and_count_only_what_went_out_between() -> None:
    meter, ih = UploadMeter(span=3), b"\x01" * 20
    assert meter.rate(ih) == 0.0
    meter.mark(10.0, {ih: 1000})
    assert meter.rate(ih) == 0.0
    meter.mark(11.0, {ih: 3000})
    assert meter.rate(ih) == 2000.0
    meter.mark(12.0, {ih: 3000})
    meter.mark(13.0, {ih: 3000})  # the first mark falls out: 0 over the last two seconds
    assert meter.rate(ih) == 0.0


def test_a_download_without_peers_or_with_every_peer_choking_is_stalled_and_says_why() -> None:
    assert job_state("downloading", 0, 0, 0) == "stalled: no peers"
    assert job_state("downloading", 2, 2, 0) == "stalled: choked by every peer"
    assert job_state("downloading", 2, 1, 0) == "downloading"
    assert job_state("waiting for the tracker at x: retrying", 0, 0, 0) == "waiting for the tracker"
    assert job_state("checking pieces on disk", 0, 0, 0) == "checking"


# ---- one reactor, real nodes

@pytest.fixture(name="cluster")
def _cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = Cluster(tmp_path)
    yield c
    pytest_twisted.blockon(defer.ensureDeferred(c.stop()))


def _tracker(cluster: Cluster) -> Any:
    return cluster.services[0].tracker.state


def _events(cluster: Cluster) -> list[str]:
    """The tracker's recent events, newest first, as its web page shows them."""
    return [e.text for e in cluster.services[0].tracker.events.newest(50)]


def _row(node: Node, name: str) -> dict[str, Any]:
    [row] = [r for r in node.transfers()["transfers"] if r["name"] == name]
    return row


async def _held_half_way(cluster: Cluster) -> tuple[Node, Node, Path, Any, Any, list[Any], int]:
    """Node 1 seeds data.bin but serves only its first half; node 2 downloads it up to that half."""
    [seeder], _, torrent = await _seeders(cluster, 1, SIZE)
    meta = read_torrent(str(torrent))
    half = -(-(SIZE // 2) // meta.piece_length)
    share_everything = share_only(seeder.seeder, meta.info_hash, half)
    node = cluster.node(2)
    await _registered(node)
    ended: list[Any] = []
    node.download(str(torrent), lambda p: None).addBoth(ended.append)
    await _until(lambda: bool(node.jobs) and _row(node, "data.bin")["done"] == half * meta.piece_length,
                 "node 2 to hold the first half")
    state = _tracker(cluster)
    await _until(lambda: 2 in state.owners(meta.info_hash_hex), "node 2 announced as a partial owner")
    assert state.progress(meta.info_hash_hex, 2) is not None  # partial, not complete
    return seeder, node, torrent, meta, share_everything, ended, half * meta.piece_length


@pytest_twisted.ensureDeferred
async def test_pause_withdraws_sends_nothing_survives_a_restart_and_resume_fetches_only_the_rest(
    cluster: Cluster,
) -> None:
    seeder, node, torrent, meta, share_everything, ended, half = await _held_half_way(cluster)
    state = _tracker(cluster)
    row = _row(node, "data.bin")
    assert row["state"] in ("downloading", "stalled: choked by every peer") and row["peers"] == 1, row

    said = await node.pause(meta.info_hash_hex[:8])
    assert said == (f"paused data.bin: {half} of {SIZE} bytes verified are kept in .incomplete/; nothing is sent"
                    " or served; withdrawn at the tracker"), said
    # The client that waited is told, with a failure (a non-zero exit for the CLI).
    [failed] = ended
    assert isinstance(failed, Failure) and failed.getErrorMessage() == "data.bin: paused by the operator"
    assert 2 not in state.owners(meta.info_hash_hex)  # no one is sent to it
    assert "node 2 paused data.bin" in _events(cluster)  # the tracker was told why
    assert meta.info_hash not in node.seeder.files and meta.info_hash not in node.downloads  # nothing served or fetched
    sent = node.protocol.sent
    row = _row(node, "data.bin")
    assert (row["state"], row["done"], row["download_rate"]) == ("paused", half, None)
    assert await node.pause("data.bin") == "data.bin is paused already"
    folder = cluster.tmp / "nf" / "2"
    assert {p.suffix for p in (folder / ".incomplete").iterdir()} == {".part", ".have", ".torrent", ".held"}
    assert node.protocol.sent == sent  # a paused download sends nothing

    # A restart keeps it paused: listed, not resumed.
    await defer.maybeDeferred(node.stopService)
    again = cluster.node(2)
    await _registered(again)
    await _until(lambda: bool(again.held), "node 2 to find its paused download")
    assert not again.jobs and _row(again, "data.bin")["state"] == "paused"
    assert _row(again, "data.bin")["done"] == half
    assert 2 not in state.owners(meta.info_hash_hex)

    share_everything()
    said = await again.resume("data.bin")
    assert said.startswith(f"resumed data.bin: it goes on from the {half} of {SIZE} bytes verified before"), said
    assert not (folder / ".incomplete" / f"{meta.info_hash_hex}.held").exists()
    done = await again.download(str(torrent), lambda p: None)  # joins the resumed download
    # Only the second half was fetched: the verified pieces were kept.
    assert f"{SIZE - half} bytes fetched now" in done, done
    assert _row(again, "data.bin")["state"] == "seeding"
    # Resumed and finished: the tracker holds node 2 as a complete owner again.
    assert 2 in state.owners(meta.info_hash_hex) and state.progress(meta.info_hash_hex, 2) is None
    assert (folder / "data.bin").read_bytes() == (cluster.tmp / "nf" / "1" / "data.bin").read_bytes()


@pytest_twisted.ensureDeferred
async def test_cancel_keeps_the_verified_pieces_for_a_later_download_and_delete_data_removes_them(
    cluster: Cluster,
) -> None:
    seeder, node, torrent, meta, share_everything, ended, half = await _held_half_way(cluster)
    state = _tracker(cluster)
    said = await node.cancel("data.bin")
    assert said == (f"cancelled data.bin: withdrawn at the tracker; {half} of {SIZE} bytes verified are kept in"
                    " .incomplete/ (download it again to resume)"), said
    [failed] = ended
    assert isinstance(failed, Failure) and "cancelled by the operator" in failed.getErrorMessage()
    assert 2 not in state.owners(meta.info_hash_hex)
    assert _row(node, "data.bin")["state"] == "cancelled"
    share_everything()
    with pytest.raises(CommandFailed, match="complete: nothing to cancel"):
        await seeder.cancel("data.bin")

    # A download of it again goes on from the kept pieces.
    done = await node.download(str(torrent), lambda p: None)
    assert f"{SIZE - half} bytes fetched now" in done, done

    # Cancel with --delete-data: nothing is left in .incomplete/.
    other = cluster.tmp / "nf" / "1" / "more.bin"
    _file(other, SIZE, seed=9)
    assert "announced" in await seeder.send("more.bin")
    more = read_torrent(str(other.with_name("more.bin.torrent")))
    share_only(seeder.seeder, more.info_hash, 1)
    node.download(str(other.with_name("more.bin.torrent")), lambda p: None).addErrback(lambda f: None)
    await _until(lambda: more.info_hash in node.jobs and _row(node, "more.bin")["done"] > 0, "more.bin under way")
    said = await node.cancel(more.info_hash_hex, delete=True)
    assert said == "cancelled more.bin: withdrawn at the tracker; its partial data is deleted", said
    assert list((cluster.tmp / "nf" / "2" / ".incomplete").iterdir()) == []
    assert [r["name"] for r in node.transfers()["transfers"]] == ["data.bin"]


@pytest_twisted.ensureDeferred
async def test_stop_seeding_and_remove_withdraw_first_and_delete_only_inside_the_node_folder(
    cluster: Cluster, tmp_path: Path,
) -> None:
    [seeder], _, torrent = await _seeders(cluster, 1, MIB)
    state = _tracker(cluster)
    meta = read_torrent(str(torrent))
    assert 1 in state.owners(meta.info_hash_hex)
    said = await seeder.stop_seeding("data.bin")
    path = cluster.tmp / "nf" / "1" / "data.bin"
    assert said == f"stopped seeding data.bin: withdrawn at the tracker; no longer seeded; the file stays at {path}"
    assert 1 not in state.owners(meta.info_hash_hex) and path.exists()
    assert _events(cluster)[0] == "node 1 stopped seeding data.bin"
    assert seeder.transfers() == {"transfers": []}
    assert "data.bin" not in (cluster.tmp / "nf" / "1" / ".seeding.json").read_text()  # not shared after a restart

    # remove --delete-data: withdrawn, forgotten, deleted.
    assert "announced" in await seeder.send("data.bin")
    said = await seeder.remove("data.bin", delete=True)
    assert said == f"removed data.bin: withdrawn at the tracker; no longer seeded; deleted {path}", said
    assert not path.exists() and 1 not in state.owners(meta.info_hash_hex)
    assert _events(cluster)[0] == "node 1 removed data.bin"

    # Outside the node's folder: refused, and nothing is withdrawn or deleted.
    outside = tmp_path / "elsewhere.bin"
    _file(outside, MIB, seed=3)
    assert "announced" in await seeder.send(str(outside))
    ih = read_torrent(str(cluster.tmp / "nf" / "1" / "elsewhere.bin.torrent")).info_hash_hex
    with pytest.raises(CommandFailed, match="outside this node's folder"):
        await seeder.remove("elsewhere.bin", delete=True)
    assert outside.exists() and 1 in state.owners(ih)
    said = await seeder.remove("elsewhere.bin")
    assert said == f"removed elsewhere.bin: withdrawn at the tracker; no longer seeded; the file stays at {outside}"
    assert outside.exists() and 1 not in state.owners(ih)
    with pytest.raises(CommandFailed, match="no torrent named 'elsewhere.bin'"):
        await seeder.info("elsewhere.bin")


@pytest_twisted.ensureDeferred
async def test_remove_forgets_a_download_and_keeps_its_pieces_for_a_later_download_unless_told(
    cluster: Cluster,
) -> None:
    seeder, node, torrent, meta, share_everything, ended, half = await _held_half_way(cluster)
    said = await node.remove("data.bin")
    assert said == ("removed data.bin: withdrawn at the tracker; forgotten; its verified pieces stay in"
                    " .incomplete/ for a later download of it"), said
    [failed] = ended
    assert isinstance(failed, Failure) and failed.getErrorMessage() == "data.bin: removed by the operator"
    assert node.transfers() == {"transfers": []} and 2 not in _tracker(cluster).owners(meta.info_hash_hex)
    incomplete = cluster.tmp / "nf" / "2" / ".incomplete"
    assert {p.suffix for p in incomplete.iterdir()} == {".part", ".have"}  # no torrent copy: no restart resumes it
    share_everything()
    done = await node.download(str(torrent), lambda p: None)
    assert f"{SIZE - half} bytes fetched now" in done, done

@pytest_twisted.ensureDeferred
async def test_a_withdrawal_the_tracker_missed_is_sent_when_it_answers_again(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, extra=["--node-interval", "0.5"])
    try:
        [seeder], _, torrent = await _seeders(cluster, 1, MIB)
        ih = read_torrent(str(torrent)).info_hash_hex
        port = cluster.tracker_port
        await defer.maybeDeferred(cluster.services[0].stopService)
        said = await seeder.stop_seeding("data.bin")
        assert said.startswith("stopped seeding data.bin: not withdrawn yet: ") and \
            "it will be when the tracker answers; no longer seeded" in said, said
        outbox = seeder.folder / ".outbox.json"
        # Kept across a restart of the node too, with what the operator did.
        assert json.loads(outbox.read_text())["withdraw"] == [{"info_hash": ih, "reason": "stopped seeding"}]
        await cluster.start_tracker(port)  # the same database: it still holds node 1 as the file's owner
        state = cluster.services[-1].tracker.state
        await _until(lambda: not outbox.exists() and 1 not in state.owners(ih), "the withdrawal to reach the tracker")
        assert 1 in state.node_ids()
        assert "node 1 stopped seeding data.bin" in [e.text for e in cluster.services[-1].tracker.events.newest(20)]
    finally:
        await cluster.stop()
