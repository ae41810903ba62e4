"""What the supervisor and its processes say to each other over their pipes, typed.

One `Message` per send: its `kind` says what `value` holds. A child says READY once it
serves (never a line of text to match); lines for people go as SAY.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    SAY = "say"  # child -> supervisor: a line (str) to print or log
    READY = "ready"  # child -> supervisor: serving (no value)
    ANSWERS_READY = "answers-ready"  # worker -> supervisor: it now says ready to clients (no value)
    FAILED = "failed"  # child -> supervisor: why it could not start or run (str); it exits 2
    METRICS = "metrics"  # observer -> supervisor: the port /metrics listens on (int)
    PROBED = "probed"  # reload check -> supervisor: None, or why the reload cannot be made (str)
    RELOAD = "reload"  # supervisor -> child: the settings to run (a Settings snapshot, bytes)
    RELOADED = "reloaded"  # child -> supervisor: None, or why its reload failed (str)
    CHALLENGERS = "challengers"  # supervisor -> observer: the rings (to, from) of a challengers process started
    # by a reload (a server without challengers has neither the process nor its rings)


@dataclass(frozen=True, slots=True)
class Message:
    kind: Kind
    value: object = None
