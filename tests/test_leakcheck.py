"""What the leak tests call growth (leakcheck.grown): a gain in every cycle
after the first, not a gain that comes once."""

from __future__ import annotations

from collections import Counter

from .leakcheck import grown


def snapshots(*counts: int) -> list[Counter[str]]:
    return [Counter({"leaky": n, "steady": 100}) for n in counts]


def test_a_type_that_gains_in_every_cycle_has_grown():
    assert grown(snapshots(0, 100, 131, 162), noise=60) == {"leaky": [31, 31]}


def test_a_gain_that_comes_once_or_stays_within_the_noise_has_not():
    assert grown(snapshots(0, 100, 166, 166), noise=60) == {}  # once, however large
    assert grown(snapshots(0, 100, 130, 160), noise=60) == {}  # within it
    assert grown(snapshots(0, 500, 100, 100), noise=60) == {}  # the first cycle warms up
