"""Connections' timeouts off the reactor's heap (deadlines.py): each kind
takes one reactor call however many connections wait, and every deadline
comes exactly when it was set for, on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from txfanout.deadlines import Deadlines, Timeline


def deadlines(length: float = 1.0) -> tuple[Clock, Deadlines[str], list[tuple[float, str]]]:
    clock = Clock()
    expired: list[tuple[float, str]] = []
    return clock, Deadlines(clock, length, lambda key: expired.append((clock.seconds(), key))), expired


def timeline() -> tuple[Clock, Timeline[str], list[tuple[float, str]]]:
    clock = Clock()
    expired: list[tuple[float, str]] = []
    return clock, Timeline(clock, lambda key: expired.append((clock.seconds(), key))), expired


def test_each_deadline_comes_its_length_after_it_was_set_on_one_reactor_call():
    clock, idle, expired = deadlines(1.0)
    for i in range(100):
        if i:
            clock.advance(0.01)
        idle.set(f"c{i}")
    assert len(clock.getDelayedCalls()) == 1 and len(idle) == 100
    assert expired == [] and clock.seconds() < 1.0  # the first is due at 1.0
    clock.advance(0.01)
    assert expired == [(clock.seconds(), "c0")]
    for _ in range(99):
        clock.advance(0.01)
    assert [key for _, key in expired] == [f"c{i}" for i in range(100)]
    assert len(idle) == 0 and clock.getDelayedCalls() == []


def test_a_deadline_set_again_is_moved_and_a_cleared_one_never_comes():
    clock, idle, expired = deadlines(1.0)
    idle.set("moved")
    idle.set("cleared")
    idle.set("kept")
    clock.advance(0.5)
    idle.set("moved")  # now due at 1.5
    idle.clear("cleared")
    idle.clear("never set")
    clock.advance(0.5)
    assert expired == [(1.0, "kept")]
    clock.advance(0.49)
    assert expired == [(1.0, "kept")]
    clock.advance(0.01)
    assert expired == [(1.0, "kept"), (clock.seconds(), "moved")]
    assert clock.getDelayedCalls() == []


def test_clearing_every_deadline_leaves_nothing_on_the_reactor():
    clock, idle, expired = deadlines(1.0)
    idle.set("a")
    idle.set("b")
    idle.clear("a")
    assert len(clock.getDelayedCalls()) == 1
    idle.clear("b")
    assert clock.getDelayedCalls() == [] and "b" not in idle
    clock.advance(2.0)
    assert expired == []


def test_a_deadline_set_while_one_expires_comes_a_length_later():
    clock = Clock()
    expired: list[tuple[float, str]] = []

    def expire(key: str) -> None:
        expired.append((clock.seconds(), key))
        if key == "first":
            idle.set("second")  # as a connection closed for idleness starts its drain

    idle = Deadlines(clock, 1.0, expire)
    idle.set("first")
    clock.advance(1.0)
    clock.advance(1.0)
    assert expired == [(1.0, "first"), (2.0, "second")]
    assert clock.getDelayedCalls() == []


def test_a_deadline_comes_when_the_clock_reaches_it():
    clock, arrivals, expired = deadlines(0.3)
    clock.advance(0.1)
    arrivals.set("a")
    for _ in range(3):
        clock.advance(0.1)
    assert [key for _, key in expired] == ["a"]


def test_a_timeline_keeps_deadlines_of_any_length_on_one_reactor_call():
    clock, held, expired = timeline()
    held.set("long", 3.0)
    held.set("short", 1.0)
    held.set("middle", 2.0)
    assert len(clock.getDelayedCalls()) == 1
    assert list(held) == ["long", "short", "middle"]  # the one set longest ago first
    assert list(reversed(held)) == ["middle", "short", "long"]
    assert [held.when(key) for key in held] == [3.0, 1.0, 2.0]
    clock.advance(1.0)
    clock.advance(1.0)
    clock.advance(1.0)
    assert expired == [(1.0, "short"), (2.0, "middle"), (3.0, "long")]
    assert clock.getDelayedCalls() == []


def test_a_timeline_deadline_set_at_a_time_comes_exactly_then():
    clock, held, expired = timeline()
    clock.advance(0.1)
    held.set_at("first", 0.3)  # 0.1 + 0.2 is not 0.3 in floating point
    held.set_at("past", 0.05)
    assert held.when("first") == 0.3 and len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert expired == [(0.1, "past")]
    clock.advance(0.2)
    assert expired == [(0.1, "past"), (clock.seconds(), "first")]
    assert "first" not in held and clock.getDelayedCalls() == []


def test_a_timeline_deadline_moved_sooner_or_later_comes_when_last_set():
    clock, held, expired = timeline()
    held.set("later", 1.0)
    held.set("sooner", 5.0)
    held.set("later", 2.0)
    held.set("sooner", 0.5)
    assert list(held) == ["later", "sooner"]
    clock.advance(0.5)
    clock.advance(0.5)
    assert expired == [(0.5, "sooner")]
    clock.advance(1.0)
    assert expired == [(0.5, "sooner"), (2.0, "later")]
    held.set("again", 1.0)
    held.clear("again")
    clock.advance(2.0)
    assert len(expired) == 2 and clock.getDelayedCalls() == []


def test_a_timeline_holds_no_more_stale_entries_than_deadlines_set_within_its_longest():
    clock, held, expired = timeline()
    held.set("far", 100.0)
    for _ in range(1000):  # holds that end early, as clients leave
        held.set("brief", 1.0)
        held.clear("brief")
    assert len(held._heap) == 1001
    clock.advance(1.0)  # their deadlines came: dropped on the way
    assert len(held._heap) == 1 and expired == []
    held.clear("far")
    assert held._heap == [] and clock.getDelayedCalls() == []
