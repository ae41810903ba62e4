"""The join's id table against a dict under random puts and removals (tombstones, rebuilds)."""

from __future__ import annotations

import numpy as np

from kernels.idtable import IdTable, id_key


def test_the_table_answers_as_a_dict_does():
    rng = np.random.default_rng(0)
    table, truth = IdTable(500), {}
    ids = [f"id-{i}" for i in range(3000)]
    for step in range(40_000):
        key = id_key(ids[int(rng.integers(len(ids)))])
        if rng.random() < 0.55 and len(truth) < 1000:
            value = int(rng.integers(1 << 40))
            assert table.put(key, value) == truth.get(key, -1)
            truth[key] = value
        elif truth and rng.random() < 0.9:
            victim = list(truth)[int(rng.integers(len(truth)))]
            table.remove_if(victim, truth[victim] + 1)  # not its value: stays
            table.remove_if(victim, truth.pop(victim))
        assert table.get(key) == truth.get(key, -1)
    assert table.live == len(truth)
    assert all(table.get(k) == v for k, v in truth.items())
    assert len(table.keys) <= 4096  # grown only as the live keys needed (up to 1,000 of them)


def test_reserved_keys_are_moved_off():
    assert id_key("x") not in (0, 1)
    table = IdTable(4)
    for key in (2, 3, -5, 2 ** 62):
        table.put(key, key)
    assert [table.get(k) for k in (2, 3, -5, 2 ** 62, 7)] == [2, 3, -5, 2 ** 62, -1]
