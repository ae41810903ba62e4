"""The window state of a sliding two-sample KS, as jitted kernels (kernels/sliding_ks.py
holds the classes that own the arrays and check the calls).

The reference is sorted once. A new value is placed among the reference's K distinct
values -- a value equal to a reference value has a slot of its own, one between two of them
the gap slot there -- so a window is 2K+1 slot counts. Each slot keeps
w = m*C - n*R (C: the window's count there, R: the reference's, m and n their sizes), and
the statistic times n*m is the largest |prefix sum of w| over the slots.

Placing a value: a bucket table over the reference's finite range gives the first reference
index of the value's bucket; a branch-free search of fixed length (set by the fullest
bucket) finishes it. Two passes per block of values -- all placements, then the ring and
slot updates -- keep each pass free of unpredictable branches, so the CPU overlaps values.

A full window's statistic is found by the cheapest exact route (see _full_h): replaying the
slots changed since the last query through a lazy segment tree (O(log K) each) when they are
few, else one pass over the blocks of slots that can hold it (_bounded_scan_h).
"""

from __future__ import annotations

import numpy as np

from kernels._jit import jit

SLOT_SHIFT = 6  # slots per block of the bounded scan: 64


@jit
def _place(values, start, end, slots, uniq, k, bstart, lo, hi, scale, steps):
    """slots[t - start] = the slot of values[t] (-1 for NaN). `uniq` holds the K distinct
    reference values followed by at least 2*steps + 1 copies of +inf, so the fixed-length
    search never leaves it; a placement the rounding of the bucket index got wrong fails
    the check and is found by a full binary search."""
    nb = bstart.shape[0] - 1
    for t in range(start, end):
        v = values[t]
        if v >= lo and v <= hi:
            b = int((v - lo) * scale)
            if b >= nb:
                b = nb - 1
            pos = bstart[b]
            step = steps
            while step > 0:  # branch-free: pos += step where uniq[pos + step - 1] < v
                pos += step * (uniq[pos + step - 1] < v)
                step >>= 1
            if not ((pos == 0 or uniq[pos - 1] < v) and uniq[pos] >= v):
                pos = np.searchsorted(uniq[:k], v)
        elif v != v:
            slots[t - start] = -1
            continue
        else:
            pos = np.searchsorted(uniq[:k], v)
        slots[t - start] = 2 * pos + (uniq[pos] == v)


@jit
def _note(pending, npend, slot):
    """Note a changed slot for the tree; the new pending count (-1 once the list overflows,
    or while the tree is stale)."""
    if npend < 0:
        return npend
    if npend < pending.shape[0]:
        pending[npend] = slot
        return npend + 1
    return -1


@jit
def _slide(values, start, end, scratch, uniq, k, bstart, lo, hi, scale, steps, ring, state, w, bcount, pending, m):
    """Insert values[start:end] (evicting the oldest once full); state = [filled, head,
    NaNs, pending count (-1: the tree is stale), values since the last query]. A slot's
    weight w moves by m per value in and out (while the window fills, w already holds its
    final form m*C - window*R: see _scan_h), and bcount counts the window's values per
    block of 64 slots (1 << SLOT_SHIFT; see _bounded_scan_h). The slots touched are noted in
    `pending` while the tree is in use."""
    window = ring.shape[0]
    filled = state[0]
    head = state[1]
    npend = state[3]
    block = scratch.shape[0]
    for first in range(start, end, block):
        last = min(first + block, end)
        _place(values, first, last, scratch, uniq, k, bstart, lo, hi, scale, steps)
        for t in range(last - first):
            slot = scratch[t]
            if slot < 0:
                state[2] += 1
                continue
            if filled == window:
                old = ring[head]
                if old == slot:
                    head = head + 1 if head + 1 < window else 0
                    continue
                w[old] -= m
                bcount[old >> SLOT_SHIFT] -= 1
                npend = _note(pending, npend, old)
            else:
                filled += 1
            ring[head] = slot
            w[slot] += m
            bcount[slot >> SLOT_SHIFT] += 1
            npend = _note(pending, npend, slot)
            head = head + 1 if head + 1 < window else 0
    state[0] = filled
    state[1] = head
    state[3] = npend
    state[4] += end - start


@jit
def _combine(sums, maxp, minp, i):
    """Node i from its children: total, and the max / min over prefixes."""
    left = 2 * i
    right = left + 1
    sums[i] = sums[left] + sums[right]
    a = sums[left] + maxp[right]
    maxp[i] = maxp[left] if maxp[left] > a else a
    b = sums[left] + minp[right]
    minp[i] = minp[left] if minp[left] < b else b


@jit
def _tree_set(sums, maxp, minp, leaf, value, size):
    i = size + leaf
    sums[i] = value
    maxp[i] = value
    minp[i] = value
    i >>= 1
    while i >= 1:
        _combine(sums, maxp, minp, i)
        i >>= 1


@jit
def _levels(size):
    levels = 1
    while (1 << levels) < size:
        levels += 1
    return levels


@jit
def _sync_tree(state, w, pending, sums, maxp, minp, size):
    """Bring the tree up to date with w: replay the pending slots, or rebuild it bottom-up
    in O(slots) when that is cheaper (or the pending list overflowed)."""
    npend = state[3]
    if npend == 0:
        return
    if npend < 0 or npend * _levels(size) > size:
        for s in range(w.shape[0]):
            sums[size + s] = w[s]
            maxp[size + s] = w[s]
            minp[size + s] = w[s]
        for i in range(size - 1, 0, -1):
            _combine(sums, maxp, minp, i)
    else:
        for q in range(npend):
            s = pending[q]
            _tree_set(sums, maxp, minp, s, w[s], size)
    state[3] = 0


@jit
def _scan_h(w, ref_slot, spare):
    """max |prefix sum of w + spare*R| over the slots. A full window has spare = 0; one
    holding n < window values has spare = window - n, which turns m*C - window*R into
    m*C - n*R."""
    d = 0
    top = 0
    bottom = 0
    if spare == 0:
        for s in range(w.shape[0]):
            d += w[s]
            top = max(top, d)
            bottom = min(bottom, d)
    else:
        for s in range(w.shape[0]):
            d += w[s] + spare * ref_slot[s]
            top = max(top, d)
            bottom = min(bottom, d)
    return max(top, -bottom)


@jit
def _bounded_scan_h(w, bcount, bref, m, window):
    """max |prefix sum of w| over the slots of a full window, visiting only the blocks of
    64 slots that can hold it. Within block j the prefix stays within
    [P_j - window*R_j, P_j + m*C_j] (P_j: the prefix before the block; C_j, R_j: its window
    and reference counts, since each slot's w lies in [-window*R, m*C]). The block ends'
    prefixes are exact values and give a first answer; a block whose bounds cannot beat
    it is skipped. Far from the largest gap most blocks are: a few percent are visited."""
    nblocks = bcount.shape[0]
    best = 0
    p = 0
    for j in range(nblocks):
        p += m * bcount[j] - window * bref[j]
        best = max(best, abs(p))
    p = 0
    slots = w.shape[0]
    for j in range(nblocks):
        top = p + m * bcount[j]
        bottom = p - window * bref[j]
        if top > best or -bottom > best:
            d = p
            for s in range(j << SLOT_SHIFT, min((j + 1) << SLOT_SHIFT, slots)):
                d += w[s]
                best = max(best, abs(d))
        p += m * bcount[j] - window * bref[j]
    return best


@jit
def _full_h(state, w, bcount, bref, m, window, pending, sums, maxp, minp, size):
    """The statistic (times n*m) of a full window, by the cheapest exact route: replay the
    few slots changed since the last query through the tree; or, when many changed, scan
    w (the blocks that can hold the answer) and let the tree go stale -- rebuilding it only
    once queries are frequent again."""
    levels = _levels(size)
    slots = w.shape[0]
    since = state[4]
    state[4] = 0
    npend = state[3]
    if npend >= 0 and npend * levels <= slots:
        _sync_tree(state, w, pending, sums, maxp, minp, size)
    elif since * levels * 4 <= slots:
        state[3] = -1
        _sync_tree(state, w, pending, sums, maxp, minp, size)  # rebuild
    else:
        state[3] = -1
        return _bounded_scan_h(w, bcount, bref, m, window)
    a = maxp[1]
    b = -minp[1]
    best = a if a > b else b
    return best if best > 0 else 0


@jit
def _query_h(state, w, bcount, bref, ref_slot, m, pending, sums, maxp, minp, size, window):
    """The statistic times n*m now (an O(K) scan while the window fills)."""
    if state[0] == window:
        return _full_h(state, w, bcount, bref, m, window, pending, sums, maxp, minp, size)
    return _scan_h(w, ref_slot, window - state[0])


@jit
def _advance_columns(values, ends, boundary, scratch, uniqs, ks, bstarts, bounds, steps, rings, states, ws,
                     bcounts, brefs, pendings, ref_slots, sums, maxps, minps, sizes, ms, out_h, out_n):
    """Column by column, slide each column's window over its row of `values` in pieces
    ending at `ends`; after each piece with `boundary` set, note the statistic (times n*m)
    and n in out_h / out_n [column, boundary]. A column's state comes into cache once per
    call rather than once per piece."""
    for c in range(values.shape[0]):
        row = values[c]
        window = rings[c].shape[0]
        start = 0
        b = 0
        for p in range(ends.shape[0]):
            end = ends[p]
            _slide(row, start, end, scratch, uniqs[c], ks[c], bstarts[c], bounds[c, 0], bounds[c, 1], bounds[c, 2],
                   steps[c], rings[c], states[c], ws[c], bcounts[c], pendings[c], ms[c])
            start = end
            if boundary[p]:
                out_h[c, b] = _query_h(states[c], ws[c], bcounts[c], brefs[c], ref_slots[c], ms[c], pendings[c],
                                       sums[c], maxps[c], minps[c], sizes[c], window)
                out_n[c, b] = states[c][0]
                b += 1
