"""A server's /metrics as numbers: what the benches read of the server they measure."""

from __future__ import annotations

import urllib.request


def scrape(url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """GET `url` (a /metrics address): {'name{labels}': value} for every sample."""
    text = urllib.request.urlopen(url, timeout=timeout_s).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values
