"""Neutral error codes for the engine core; each ingress maps them to its protocol."""

from __future__ import annotations

import enum
import errno


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"  # the request is malformed or does not fit the model
    NOT_FOUND = "not_found"  # unknown model or version
    RESOURCE_EXHAUSTED = "resource_exhausted"  # a bounded queue is full: retry later
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the deadline passed before scoring
    UNAVAILABLE = "unavailable"  # the engine is draining or stopped
    INTERNAL = "internal"  # the model failed on a valid batch


MAX_MESSAGE = 2000  # characters of an error message; gRPC refuses status details much past 8 KiB
MAX_ECHO = 100  # characters of one piece of client text (a name, an id) quoted in a message


def clip(text: object, limit: int = MAX_ECHO) -> str:
    """Client text as an error message may quote it: at most `limit` characters, and says
    how long it really was when cut."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def listed(names, limit: int = 5) -> str:
    """Client names quoted for an error message: the first `limit`, clipped, and how many more."""
    names = list(names)
    shown = ", ".join(repr(clip(n)) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class UserFacing(Exception):
    """An error found while starting or reloading whose message is for the user, not a bug's
    (a model that does not load, a config that cannot be used): `startup_error` says it."""

    prefix = ""  # "config error:\n" for a config's (unreadable certificates, tokens, secrets, drift references)


class UsageError(UserFacing):
    """An everyday mistake outside a request -- a port in use, no server where one was
    expected, a file of the wrong kind: the `scorewire` command prints the message as one line
    (`scorewire: ...`, naming what to change) and exits 2, with the traceback only at
    `--log-level DEBUG`."""


def cannot_bind(what: str, host: str, port: int, key: str, exc: OSError) -> UsageError:
    """A port the server cannot have, as the one line that names the setting to change."""
    why = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    return UsageError(f"cannot bind {what} to {host}:{port} ({why}); change [server] {key} (0: any free port)")


class EngineError(Exception):
    """An error with a neutral code and a message meant for the caller (at most MAX_MESSAGE
    characters: whatever client text it quotes, a message always fits the protocol)."""

    def __init__(self, code: ErrorCode, message: str):
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + f"... ({len(message)} characters)"
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"EngineError({self.code.name}, {self.message!r})"


def startup_error(exc: BaseException) -> str | None:
    """What to tell the user about an error found while starting or reloading (None: not one
    of those: a bug, whose traceback goes to the log)."""
    if isinstance(exc, UserFacing):
        return f"{exc.prefix}{exc}"
    return None
