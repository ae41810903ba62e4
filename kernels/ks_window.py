"""The window state of a sliding two-sample KS, as jitted kernels (kernels/sliding_ks.py
holds the classes that own the arrays and check the calls).

The reference is sorted once. A new value is placed among the reference's K distinct
values -- a value equal to a reference value has a slot of its own, one between two of them
the gap slot there -- so a window is 2K+1 slot counts. Each slot keeps
w = m*C - n*R (C: the window's count there, R: the reference's, m and n their sizes), and
the statistic times n*m is the largest |prefix sum of w| over the slots.

Several window sizes share one ring of the largest one's slots: a value is placed once, and
each window adds its slot and evicts the slot that entered `size` places before. Each window
has its own weights, block counts and tree.

Placing a value: a bucket table over the reference's finite range gives the first reference
index of the value's bucket; a branch-free search of fixed length (set by the fullest
bucket) finishes it. Two passes per block of values -- all placements, then the ring and
slot updates -- keep each pass free of unpredictable branches, so the CPU overlaps values.

A full window's statistic is found by the cheapest exact route (see _full_h): replaying the
slots changed since the last query through a lazy segment tree (O(log K) each) when they are
few, else one pass over the blocks of slots that can hold it (_bounded_scan_h). Whether it
reaches a threshold (a critical value) is cheaper still: _reaches enters only the blocks
whose bounds reach it, usually none.
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
        slots[t - start] = 2 * pos + ((pos < k) & (uniq[pos] == v))  # past the last: a gap (+inf pads uniq)


@jit
def _slide(values, start, end, scratch, uniq, k, bstart, lo, hi, scale, steps, ring, shared, sizes, wstate, w, bcount,
           pending, m):
    """Insert values[start:end] into every window at once. One ring of the largest window's
    slots is shared: window j (of sizes[j] values) evicts the slot that entered sizes[j]
    places before the newest, so a value is placed among the reference once, whatever the
    number of windows. shared = [ring head, NaNs]; wstate[j] = [filled, pending count (-1:
    the tree is stale), values since the last query]. A slot's weight w[j] moves by m per
    value in and out (while a window fills, w[j] already holds its final form
    m*C - size*R: see _scan_h), and bcount[j] counts the window's values per block of 64
    slots (1 << SLOT_SHIFT; see _bounded_scan_h). The slots touched are noted in
    pending[j] while that window's tree is in use."""
    size = ring.shape[0]
    windows = sizes.shape[0]
    head = shared[0]
    plen = pending.shape[1]
    block = scratch.shape[0]
    for first in range(start, end, block):
        last = min(first + block, end)
        _place(values, first, last, scratch, uniq, k, bstart, lo, hi, scale, steps)
        for t in range(last - first):
            slot = scratch[t]
            if slot < 0:
                shared[1] += 1
                continue
            for j in range(windows):
                window = sizes[j]
                filled = wstate[j, 0]
                if filled == window:
                    at = head - window
                    if at < 0:
                        at += size
                    old = ring[at]
                    if old == slot:
                        continue
                    w[j, old] -= m
                    bcount[j, old >> SLOT_SHIFT] -= 1
                    # noting a slot for the tree, written out twice: as a helper (even
                    # inline="always") it made this loop 1.7-2.5x slower (measured)
                    npend = wstate[j, 1]
                    if npend >= 0:
                        if npend < plen:
                            pending[j, npend] = old
                            wstate[j, 1] = npend + 1
                        else:
                            wstate[j, 1] = -1
                else:
                    wstate[j, 0] = filled + 1
                w[j, slot] += m
                bcount[j, slot >> SLOT_SHIFT] += 1
                npend = wstate[j, 1]
                if npend >= 0:
                    if npend < plen:
                        pending[j, npend] = slot
                        wstate[j, 1] = npend + 1
                    else:
                        wstate[j, 1] = -1
            ring[head] = slot
            head = head + 1 if head + 1 < size else 0
    shared[0] = head
    for j in range(windows):
        wstate[j, 2] += end - start


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
    npend = state[1]
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
    state[1] = 0


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
def _reaches(w, bcount, bref, m, window, threshold):
    """Whether max |prefix sum of w| over the slots of a full window reaches `threshold`
    (>= 1): one pass over the blocks of 64 slots, entering only those whose bounds
    [P_j - window*R_j, P_j + m*C_j] (see _bounded_scan_h) reach it. Far below the threshold
    -- a window with no drift against its critical value -- no block is entered: O(K/64)."""
    p = 0
    near = False  # a first pass without branches (only the running prefix is carried): usually all
    for j in range(bcount.shape[0]):
        c = m * bcount[j]
        r = window * bref[j]
        near |= (p + c >= threshold) | (r - p >= threshold)
        p += c - r
    if not near:
        return False
    p = 0
    slots = w.shape[0]
    for j in range(bcount.shape[0]):
        if p + m * bcount[j] >= threshold or window * bref[j] - p >= threshold:
            d = p
            for s in range(j << SLOT_SHIFT, min((j + 1) << SLOT_SHIFT, slots)):
                d += w[s]
                if d >= threshold or -d >= threshold:
                    return True
        p += m * bcount[j] - window * bref[j]
    return False


@jit
def _full_h(state, w, bcount, bref, m, window, pending, sums, maxp, minp, size):
    """The statistic (times n*m) of a full window, by the cheapest exact route: replay the
    few slots changed since the last query through the tree; or, when many changed, scan
    w (the blocks that can hold the answer) and let the tree go stale -- rebuilding it only
    once queries are frequent again."""
    levels = _levels(size)
    slots = w.shape[0]
    since = state[2]
    state[2] = 0
    npend = state[1]
    # measured: a slot replayed through the tree costs ~100 ns, the bounded scan 1-3 us for
    # 20,000 slots, so the tree pays for itself only for a few changed slots (per level, 1/64
    # of the slots)
    if npend >= 0 and npend * levels * 64 <= slots:
        _sync_tree(state, w, pending, sums, maxp, minp, size)
    elif since * levels * 4 * 64 <= slots:
        state[1] = -1
        _sync_tree(state, w, pending, sums, maxp, minp, size)  # rebuild
    else:
        state[1] = -1
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
def _part(flat, at, c):
    """Column c's part of a flat state array: flat[at[c]:at[c + 1]]."""
    return flat[at[c]:at[c + 1]]


@jit
def _rows(flat, at, c, rows):
    """Column c's part of a flat state array, as [rows, width] (a view)."""
    part = _part(flat, at, c)
    return part.reshape((rows, part.shape[0] // rows))


@jit
def _advance_columns(values, ends, boundary, exact, thresholds, scratch, uniqs, ks, bstarts, bounds, steps, rings,
                     shareds, sizes, wstates, ws, bcounts, brefs, pendings, ref_slots, sums, maxps, minps, tree_sizes,
                     ms, at, out_h, out_n):
    """Column by column, slide each column's windows over its row of `values` in pieces
    ending at `ends`; after each piece with `boundary` set, note every window's length and
    statistic (times n*m) in out_n / out_h [column, window, boundary] -- exactly where
    `exact` is set for the boundary, the window is not full, or its statistic reaches
    thresholds[column, window]; elsewhere -1 (below the threshold: a test in O(K/64)).
    A column's state comes into cache once per call rather than once per piece.

    Each state array (uniqs ... minps) holds every column's, one after another: column c's
    is flat[at[i, c]:at[i, c + 1]], i its place in that list (the 2-D ones [windows, width])."""
    windows = sizes.shape[0]
    for c in range(values.shape[0]):
        row = values[c]
        uniq, bstart, ring, shared = _part(uniqs, at[0], c), _part(bstarts, at[1], c), _part(rings, at[2], c), \
            _part(shareds, at[3], c)
        wstate, w, bcount = _rows(wstates, at[4], c, windows), _rows(ws, at[5], c, windows), \
            _rows(bcounts, at[6], c, windows)
        bref, pending, ref_slot = _part(brefs, at[7], c), _rows(pendings, at[8], c, windows), \
            _part(ref_slots, at[9], c)
        tree_sums, maxp, minp = _rows(sums, at[10], c, windows), _rows(maxps, at[11], c, windows), \
            _rows(minps, at[12], c, windows)
        start = 0
        b = 0
        for p in range(ends.shape[0]):
            end = ends[p]
            _slide(row, start, end, scratch, uniq, ks[c], bstart, bounds[c, 0], bounds[c, 1], bounds[c, 2],
                   steps[c], ring, shared, sizes, wstate, w, bcount, pending, ms[c])
            start = end
            if boundary[p]:
                for j in range(windows):
                    state = wstate[j]
                    out_n[c, j, b] = state[0]
                    if (exact[b] or state[0] < sizes[j]
                            or _reaches(w[j], bcount[j], bref, ms[c], sizes[j], thresholds[c, j])):
                        out_h[c, j, b] = _query_h(state, w[j], bcount[j], bref, ref_slot, ms[c], pending[j],
                                                  tree_sums[j], maxp[j], minp[j], tree_sizes[c], sizes[j])
                    else:
                        out_h[c, j, b] = -1
                b += 1
