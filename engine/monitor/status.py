"""`scorewire status`: drift per feature and latency percentiles from a server's /metrics."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(target: str, timeout_s: float = 5.0) -> dict[str, list]:
    """Samples by metric family name."""
    url = target if target.startswith("http") else f"http://{target}"
    text = urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout_s).read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def status(target: str, timeout_s: float = 5.0) -> str:
    families = scrape(target, timeout_s)
    drift: dict[tuple[str, str, str], dict[str, float]] = {}
    for name in ("scorewire_drift_statistic", "scorewire_drift_pvalue", "scorewire_drift_effect", "scorewire_drift_alert"):
        for sample in families.get(name, []):
            key = (sample.labels["model"], sample.labels.get("version", ""), sample.labels["feature"])
            drift.setdefault(key, {})[name.rsplit("_", 1)[1]] = sample.value
    out = []
    if drift:
        rows = [[m, v_, f, f"{v.get('statistic', 0):.4g}", f"{v.get('pvalue', 1):.3g}", f"{v.get('effect', 0):.4g}",
                 "DRIFT" if v.get("alert") else "ok"] for (m, v_, f), v in sorted(drift.items())]
        out.append(_table(["model", "version", "feature", "statistic", "p-value", "effect", "alert"], rows))
    else:
        out.append("no drift monitors configured")
    latency: dict[tuple[str, str, str, str], dict[str, float]] = {}
    for sample in families.get("scorewire_latency_us", []):
        key = (sample.labels["model"], sample.labels.get("version", ""), sample.labels["role"], sample.labels["stage"])
        latency.setdefault(key, {})[sample.labels["quantile"]] = sample.value
    if latency:
        quantiles = sorted({q for v in latency.values() for q in v}, key=float)
        rows = [[m, v_, r, s] + [f"{v.get(q, 0) / 1000:.3f}" for q in quantiles]
                for (m, v_, r, s), v in sorted(latency.items())]
        out.append(_table(["model", "version", "role", "stage"] + [f"p{float(q) * 100:g} ms" for q in quantiles], rows))
    else:
        out.append("no latency recorded yet")
    return "\n\n".join(out)
