"""librdkafka's log lines and errors, through Python logging: secrets taken out, repeats held back.

Every Kafka setting given as a secret reference ({ env = ... } / { file = ... }), and every
value of a key that names a secret (password, secret, token, key, jaas, oauthbearer), is cut
out of every line, whatever key it was given for: librdkafka quotes configuration values in
its errors and client ids in its log lines. A line repeated within REPEAT_S (a broker that is
down logs every few milliseconds) is counted instead, and the count is said with the next.
"""

from __future__ import annotations

import logging
import re
import time

REPEAT_S = 10.0
MASK = "***"
_SENSITIVE = re.compile(r"password|secret|token|\.key$|jaas|oauthbearer|credentials", re.IGNORECASE)


class Redactor:
    def __init__(self, secrets) -> None:
        # longest first: a secret that contains another is cut whole
        self.secrets = sorted({s for s in secrets if isinstance(s, str) and len(s) >= 3}, key=len, reverse=True)

    @classmethod
    def for_tables(cls, tables: list[dict], revealed: list[dict]) -> "Redactor":
        """Secrets of librdkafka config tables: the revealed values of secret references
        (`tables` hold the references, `revealed` the same tables with their values) and the
        values of keys that name a secret."""
        from engine.settings import SecretRef

        found = []
        for table, values in zip(tables, revealed):
            for key, value in table.items():
                if isinstance(value, SecretRef) or (_SENSITIVE.search(key) and isinstance(value, str)):
                    found.append(str(values[key]))
        return cls(found)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class ClientLog:
    """What confluent-kafka's `logger` setting takes (an object with `log(level, fmt, *args)`);
    the stream's own warnings about the broker (`say`) go through it too, so they are held
    back the same way."""

    def __init__(self, logger: logging.Logger, label: str, redact: Redactor) -> None:
        self.logger = logger
        self.label = label
        self.redact = redact
        self._last: dict[str, tuple[float, int]] = {}  # line -> (when said, repeats held back since)

    def log(self, level: int, fmt: str, *args) -> None:
        self.say(level, self.redact(fmt % args if args else fmt))

    def say(self, level: int, line: str) -> None:
        now = time.monotonic()
        key = re.sub(r"\d+", "#", line)  # the same line with other numbers (ports, times) is a repeat
        said, held = self._last.get(key, (0.0, 0))
        if now - said < REPEAT_S:
            self._last[key] = (said, held + 1)
            return
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = (now, 0)
        more = f" (and {held} more like it in the last {REPEAT_S:.0f} s)" if held else ""
        self.logger.log(level, "stream %s: kafka: %s%s", self.label, line, more)
