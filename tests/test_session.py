"""The owner lifecycle of a download (p2ptorrent/node/session.py): inputs with an explicit `now`, exact actions.

No network, no clock, no Twisted: each test feeds the session what the I/O shell
would (the tracker's answer, INFO answers and timeouts, refusals, ticks) and
compares the actions it returns, in the style of magic-wormhole's test_machines.
"""

from __future__ import annotations

from p2ptorrent import wire
from p2ptorrent.node.session import (
    INFO_TRIES,
    AskHave,
    AskTracker,
    Choke,
    Drop,
    Fail,
    Greet,
    Note,
    OwnerListed,
    OwnerState,
    ReportProgress,
    Session,
    SetCookie,
    StartFetching,
    StartSwarming,
)

A, B, C, D = ("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", 3), ("10.0.0.4", 4)
P1, P2 = ("10.0.1.1", 11), ("10.0.1.2", 12)
COOKIE = b"c" * 8


LENGTH, PIECE = 10 * 262144, 262144
STATUS = {"complete": wire.OK, "partial": wire.PARTIAL, "absent": wire.NOT_FOUND}


def session(complete_slots: int = 2, partial_slots: int = 2) -> Session:
    return Session("f.bin", 99, complete_slots=complete_slots, partial_slots=partial_slots,
                   request_timeout=1.0, swarm_interval=5.0, length=LENGTH, piece_length=PIECE)


def info(status: str, same_file: bool = True, cookie: bytes = b"c" * 8) -> wire.InfoResponse:
    """An INFO answer: *status* complete, partial or absent; *same_file* False: another length."""
    return wire.InfoResponse(1, b"h" * 20, STATUS[status], LENGTH if same_file else LENGTH + 1, PIECE, cookie)


def owner(addr: tuple[str, int], partial: bool = False) -> OwnerListed:
    return OwnerListed(addr, addr[1], partial)


def decisions(actions: list) -> list:
    """The actions without the log lines."""
    return [a for a in actions if not isinstance(a, Note)]


def test_start_reports_progress_and_asks_the_tracker() -> None:
    s = session()
    assert s.started(0.0, have=3) == [ReportProgress(3), AskTracker()]


def test_greets_up_to_the_quota_in_the_trackers_order() -> None:
    s = session(complete_slots=2)
    s.started(0.0, 0)
    assert decisions(s.tracker_answered([owner(A), owner(B), owner(C)], 0.1)) == [
        Greet(A, 1, 1.0), Greet(B, 2, 1.0)]
    assert s.owners[C].state is OwnerState.CANDIDATE


def test_complete_and_partial_owners_have_quotas_of_their_own() -> None:
    s = session(complete_slots=1, partial_slots=2)
    s.started(0.0, 0)
    actions = s.tracker_answered([owner(A), owner(B), owner(P1, True), owner(P2, True)], 0.1)
    assert decisions(actions) == [StartSwarming(), Greet(A, 1, 1.0), Greet(P1, 11, 1.0), Greet(P2, 12, 1.0)]
    # A partial owner that answers as a complete one counts as complete from then on.
    assert s.info_answered(P1, info("complete", True, COOKIE), 0.2) == [StartFetching(P1, 11, COOKIE, False)]
    assert s.info_answered(A, info("complete", True, COOKIE), 0.2) == [StartFetching(A, 1, COOKIE, False)]
    # ... and when it has everything later (HAVE says so), the same.
    assert s.info_answered(P2, info("partial", True, COOKIE), 0.2) == [StartFetching(P2, 12, COOKIE, True)]
    s.owner_completed(P2)
    assert s.owners[P2].partial is False


def test_dead_owners_ranked_first_are_each_given_up_once_and_spares_greeted_as_they_miss() -> None:
    s = session(complete_slots=1)
    s.started(0.0, 0)
    assert decisions(s.tracker_answered([owner(A), owner(B), owner(C), owner(D)], 0.0)) == [Greet(A, 1, 1.0)]
    # A misses its first answer: it is asked again (twice as patient), and a spare takes its slot at once.
    assert decisions(s.info_timed_out(A, "no answer", 1.0)) == [Greet(A, 1, 2.0), Greet(B, 2, 1.0)]
    assert s.owners[A].state is OwnerState.LAGGING
    assert decisions(s.info_timed_out(B, "no answer", 2.0)) == [Greet(B, 2, 2.0), Greet(C, 3, 1.0)]
    assert decisions(s.info_answered(C, info("complete", True, COOKIE), 2.1)) == [StartFetching(C, 3, COOKIE, False)]
    # A's last try, then it is given up: once, with its fate recorded; no other greeting of it.
    assert decisions(s.info_timed_out(A, "no answer", 3.0)) == [Greet(A, 1, 4.0)]
    assert decisions(s.info_timed_out(A, "no answer", 7.0)) == []
    assert s.owners[A].state is OwnerState.DROPPED
    assert s.owners[A].outcome == f"did not answer ({INFO_TRIES} tries)"
    assert s.info_timed_out(A, "no answer", 8.0) == []  # a stray timer: nothing more


def test_a_late_answer_when_the_quota_is_full_is_not_used() -> None:
    s = session(complete_slots=1)
    s.started(0.0, 0)
    s.tracker_answered([owner(A), owner(B)], 0.0)
    s.info_timed_out(A, "no answer", 1.0)  # A lags, B greeted
    assert decisions(s.info_answered(B, info("complete", True, COOKIE), 1.1)) == [StartFetching(B, 2, COOKIE, False)]
    actions = s.info_answered(A, info("complete", True, COOKIE), 1.5)
    assert actions == [Note("info", "f.bin: node 1 answered late; enough owners already")]
    assert s.owners[A].state is OwnerState.DROPPED


def test_a_late_answer_with_room_is_used() -> None:
    s = session(complete_slots=1)
    s.started(0.0, 0)
    s.tracker_answered([owner(A), owner(B)], 0.0)
    s.info_timed_out(A, "no answer", 1.0)
    s.info_timed_out(B, "no answer", 2.0)
    assert s.info_answered(A, info("complete", True, COOKIE), 2.5) == [StartFetching(A, 1, COOKIE, False)]


def test_a_bad_cookie_refusal_greets_again_and_a_no_slot_refusal_does_not_drop() -> None:
    s = session()
    s.started(0.0, 0)
    s.tracker_answered([owner(A)], 0.0)
    s.info_answered(A, info("complete", True, COOKIE), 0.1)
    assert s.refused(A, wire.E_CHOKED, "no slot", 1.0) == [Choke(A)]
    assert s.owners[A].state is OwnerState.FETCHING
    assert s.refused(A, wire.E_BAD_COOKIE, "bad cookie", 1.1) == [Greet(A, 1, 1.0)]
    assert s.refused(A, wire.E_BAD_COOKIE, "bad cookie", 1.2) == []  # already greeting it again
    assert s.info_answered(A, info("complete", True, b"n" * 8), 1.3) == [SetCookie(A, b"n" * 8)]
    assert s.owners[A].state is OwnerState.FETCHING
    # Any other refusal drops it, and with nobody left the tracker is asked again.
    actions = s.refused(A, wire.E_NOT_FOUND, "not shared here", 2.0)
    assert decisions(actions) == [Drop(A, "refused: not shared here"), AskTracker()]


def test_need_backs_off_then_every_swarm_interval_and_sooner_after_losing_an_owner() -> None:
    s = session()
    assert decisions(s.started(0.0, 0)) == [ReportProgress(0), AskTracker()]
    s.tracker_answered([owner(A), owner(B)], 0.0)
    s.info_answered(A, info("complete", True, COOKIE), 0.0)
    s.info_answered(B, info("complete", True, COOKIE), 0.0)
    asked = []
    t = 0.0
    while t < 20.0:
        t = round(t + 0.01, 2)
        if AskTracker() in s.ticked(t, 0):
            asked.append(t)
            s.tracker_answered([owner(A), owner(B)], t)
    assert asked == [0.5, 1.5, 3.5, 7.5, 12.5, 17.5]  # +0.5, +1, +2, +4, then every 5 s
    # B goes silent and there is no spare: the tracker is asked within NEED_SOON, not 5 s later.
    s.went_silent(B, "silent for 10.0 s", 18.0)
    assert AskTracker() not in s.ticked(18.0, 0, lost=True)
    assert AskTracker() in s.ticked(19.0, 0)


def test_every_owner_gone_only_after_the_tracker_was_asked_once_more() -> None:
    s = session()
    s.started(0.0, 0)
    s.tracker_answered([owner(A), owner(B)], 0.0)
    s.info_answered(A, info("complete", True, COOKIE), 0.0)
    s.info_answered(B, info("absent", True, COOKIE), 0.0)  # B does not have it: given up, A goes on
    s.tracker_answered([owner(A), owner(B)], 0.5)
    s.went_silent(A, "silent for 10.0 s", 10.0)
    actions = s.ticked(10.0, 4, lost=True)
    assert AskTracker() in actions and not [a for a in actions if isinstance(a, Fail)]
    # The tracker knows nobody new: now it fails, naming what became of each owner.
    assert decisions(s.tracker_answered([owner(A), owner(B)], 10.1)) == [
        Fail("every owner of f.bin is gone: node 1 (10.0.0.1:1) silent for 10.0 s; node 2 (10.0.0.2:2) does not have it")]
    assert s.ticked(11.0, 4) == []  # nothing more once failed


def test_no_owner_at_all_fails_at_once_and_a_dead_tracker_says_so() -> None:
    s = session()
    s.started(0.0, 0)
    assert decisions(s.tracker_answered([], 0.1)) == [Fail("no node is sharing f.bin: the tracker knows no live owner")]
    t = session()
    t.started(0.0, 0)
    assert t.tracker_failed("connection refused", 0.1) == [
        Fail("cannot ask the tracker for owners of f.bin: connection refused")]


def test_a_tracker_that_fails_later_is_gone_around() -> None:
    s = session()
    s.started(0.0, 0)
    s.tracker_answered([owner(A)], 0.0)
    s.info_answered(A, info("complete", True, COOKIE), 0.0)
    assert decisions(s.tracker_failed("timeout", 5.0)) == []


def test_have_is_asked_of_the_owners_the_transfer_is_unsure_of_and_progress_reported_when_it_changed() -> None:
    s = session()
    s.started(0.0, 0)
    s.tracker_answered([owner(A), owner(P1, True)], 0.0)
    s.info_answered(A, info("complete", True, COOKIE), 0.0)
    s.info_answered(P1, info("partial", True, COOKIE), 0.0)
    def haves(actions: list) -> list:
        return [a for a in actions if isinstance(a, AskHave)]

    assert haves(s.ticked(1.0, 0, unsure=[P1])) == [AskHave(P1)]
    assert haves(s.ticked(1.5, 0, unsure=[P1])) == []  # once a second
    assert haves(s.ticked(2.0, 0, unsure=[A, P1])) == [AskHave(A), AskHave(P1)]
    assert ReportProgress(4) in s.ticked(5.0, 4)
    assert ReportProgress(4) not in s.ticked(10.0, 4)  # unchanged: not reported again
    s.tracker_forgot_us()
    assert ReportProgress(4) in s.ticked(10.1, 4)


def test_an_owner_whose_info_describes_another_file_is_given_up() -> None:
    s = session(complete_slots=1)
    s.started(0.0, 0)
    s.tracker_answered([owner(A), owner(B)], 0.0)
    assert decisions(s.info_answered(A, info("complete", False, COOKIE), 0.1)) == [Greet(B, 2, 1.0)]
    assert s.owners[A].outcome == "describes a different file"


def test_an_owner_dropped_for_silence_is_greeted_again_when_listed_with_back_off_and_not_for_ever() -> None:
    from p2ptorrent.node.session import MAX_REGREETS, REGREET_AFTER

    s = session()
    s.started(0.0, 0)
    s.tracker_answered([owner(A), owner(B)], 0.0)
    s.info_answered(A, info("complete"), 0.0)
    s.info_answered(B, info("complete"), 0.0)
    t = 10.0
    for n in range(1, MAX_REGREETS + 1):
        s.went_silent(A, "sent nothing for 10.0 s", t)  # loss, perhaps: B goes on meanwhile
        assert s.owners[A].state is OwnerState.DROPPED
        wait = REGREET_AFTER * 2 ** (n - 1)
        assert decisions(s.tracker_answered([owner(A), owner(B)], t + wait - 0.1)) == []  # not yet
        assert decisions(s.tracker_answered([owner(A), owner(B)], t + wait)) == [Greet(A, 1, 1.0)]
        assert s.info_answered(A, info("complete"), t + wait + 0.1) == [StartFetching(A, 1, COOKIE, False)]
        t += wait + 10.0
    s.went_silent(A, "sent nothing for 10.0 s", t)
    assert decisions(s.tracker_answered([owner(A), owner(B)], t + 1000.0)) == []  # given up for good


def test_an_owner_dropped_for_bad_data_is_never_greeted_again() -> None:
    s = session()
    s.started(0.0, 0)
    s.tracker_answered([owner(A), owner(B)], 0.0)
    s.info_answered(A, info("complete"), 0.0)
    s.info_answered(B, info("complete"), 0.0)
    s.went_silent(A, "sent corrupt data for 3 pieces", 5.0, silent=False)
    assert decisions(s.tracker_answered([owner(A), owner(B)], 100.0)) == []
