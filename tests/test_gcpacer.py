"""The GC pacer: PyPy's old generation collected by what it holds (on a
fake clock; the collector's steps are real)."""

from __future__ import annotations

import platform

import pytest
from twisted.internet.task import Clock

from txfanout import gcpacer
from txfanout.gcpacer import GcPacer

PYPY = platform.python_implementation() == "PyPy"


def whole_collection() -> None:
    """Finish the major collection in progress, then do a whole one."""
    for _ in range(2):
        while not gcpacer._collect_step().major_is_done:
            pass


def test_it_runs_exactly_where_the_collector_needs_it():
    assert gcpacer.needed() is PYPY  # CPython's collector sizes itself by objects
    clock = Clock()
    pacer = GcPacer(clock)
    pacer.start()
    assert len(clock.getDelayedCalls()) == (1 if PYPY else 0)
    pacer.stop()
    assert not clock.getDelayedCalls()


@pytest.mark.skipif(not PYPY, reason="PyPy's collector only (CPython runs the test above)")
def test_past_its_budget_the_old_generation_is_collected_step_by_step():
    clock = Clock()
    pacer = GcPacer(clock, budget=1024 * 1024, interval=0.1)
    pacer.start()
    held = [[i] * 8 for i in range(200000)]  # some megabytes
    whole_collection()  # which moves them to the old generation, alive
    del held  # now garbage in the old generation
    with_garbage = gcpacer.old_generation()
    pacer.live = with_garbage - 2 * 1024 * 1024  # as if 2 MB had come since the last one
    clock.advance(0.1)  # the first step (a step marks up to twice the nursery)
    for _ in range(10000):
        if not pacer.collecting:
            break
        clock.advance(0)  # one step per turn of the reactor
    assert not pacer.collecting and pacer.collections == 1
    assert pacer.live < with_garbage - 4 * 1024 * 1024  # the garbage went, and it knows
    clock.advance(0.1)
    assert pacer.collections == 1  # within budget again: nothing to do
    pacer.stop()
