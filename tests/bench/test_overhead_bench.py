"""bench/overhead_bench.py runs the real serving path and the floor's handler side by side."""

from __future__ import annotations

import re

from bench import overhead_bench


def test_it_measures_scorewires_path_above_the_floors_work(capsys):
    assert overhead_bench.main(["--rows", "1", "64", "--requests", "300", "--rounds", "1"]) == 0
    table = capsys.readouterr().out
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \| (-?[\d.]+) \|$", table, re.M)
    assert [r[0] for r in rows] == ["1", "64"], table
    for _, ours, floor, ratio, above in rows:
        ours, floor = float(ours), float(floor)
        assert floor > 0 and ours > 0
        # ours does all the floor does and more (validation, batcher, the hand-off record)
        assert ours > floor, table
        # the printed figures are rounded (0.1 us, 0.01x): the ratio of the rounded ones may differ by ~0.015
        assert abs(float(ratio) - ours / floor) < 0.03 and abs(float(above) - (ours - floor)) < 0.11
