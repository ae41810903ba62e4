"""Neutral error codes for the engine core; each ingress maps them to its protocol."""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"  # the request is malformed or does not fit the model
    NOT_FOUND = "not_found"  # unknown model or version
    RESOURCE_EXHAUSTED = "resource_exhausted"  # a bounded queue is full: retry later
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the deadline passed before scoring
    UNAVAILABLE = "unavailable"  # the engine is draining or stopped
    INTERNAL = "internal"  # the model failed on a valid batch


class EngineError(Exception):
    """An error with a neutral code and a message meant for the caller."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"EngineError({self.code.name}, {self.message!r})"
