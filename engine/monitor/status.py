"""`scorewire status`: drift and data quality per feature and latency percentiles from a server's
/metrics; with labels, performance, rollouts and splits; guards, conformal coverage, fairness
and segments; the memory of each process."""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from engine.errors import UsageError

_METRICS_PORT = "the server's metrics port ([server] metrics_port; `serve` prints it as 'metrics on ...')"


def _fetch(url: str, timeout_s: float) -> str:
    """The body of `url`; a server not up yet (connection refused) is retried until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=max(0.1, deadline - time.monotonic())) as response:
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            raise UsageError(f"{url} answered HTTP {exc.code}: is that {_METRICS_PORT}?") from None
        except (http.client.HTTPException, UnicodeDecodeError):  # BadStatusLine: gRPC's HTTP/2 answer
            raise UsageError(f"{url} did not answer in HTTP/1.1: is it the gRPC port? status reads "
                             f"{_METRICS_PORT}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            refused = isinstance(reason, ConnectionRefusedError)
            left = deadline - time.monotonic()
            if refused and left > 0:
                time.sleep(min(0.2, left))
                continue
            if refused:
                what = "connection refused"
            elif isinstance(reason, (socket.timeout, TimeoutError)):
                what = "no answer"
            else:
                what = getattr(reason, "strerror", None) or str(reason)
            raise UsageError(f"no server answers at {url} ({what}, waited {timeout_s:g} s): is it running, and "
                             f"is that {_METRICS_PORT}? (--timeout waits longer)") from None


def scrape(target: str, timeout_s: float = 5.0) -> dict[str, list]:
    """Samples by metric family name."""
    url = target if target.startswith("http") else f"http://{target}"
    text = _fetch(url.rstrip("/") + "/metrics", timeout_s)
    try:
        return {family.name: family.samples for family in text_string_to_metric_families(text)}
    except ValueError:
        raise UsageError(f"{url} answered, but not with Prometheus metrics: is that {_METRICS_PORT}?") from None


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _gather(families: dict[str, list], names: tuple[str, ...], labels: tuple[str, ...],
            column=lambda name, sample: name) -> dict[tuple, dict[str, float]]:
    """The samples of `names` by their `labels` (missing ones: ""), each key's values by
    `column` (default: the family's name); samples landing on one column add up (a stream's
    lag over its partitions)."""
    out: dict[tuple, dict[str, float]] = {}
    for name in names:
        for sample in families.get(name, []):
            entry = out.setdefault(tuple(sample.labels.get(k, "") for k in labels), {})
            col = column(name, sample)
            entry[col] = entry.get(col, 0) + sample.value
    return out


def _verdict(who: str, metric: str, bounds: dict[str, float]) -> str:
    """What an always-valid interval of (who - champion) on `metric` says: worse, better, or
    nothing yet (accuracy is worse when lower; the losses when higher)."""
    higher_is_worse = metric != "accuracy"
    if bounds["lower"] > 0:
        return f"{who} {'worse' if higher_is_worse else 'better'}"
    if bounds["upper"] < 0:
        return f"{who} {'better' if higher_is_worse else 'worse'}"
    return "no difference shown yet"


def _performance(families: dict[str, list]) -> list[str]:
    """Realized (labelled rows), estimated (CBPE), baseline and alert per version, role and
    metric; then each challenger against its champion on the same labelled rows."""
    by = lambda name, sample: name  # noqa: E731
    realized = _gather(families, ("scorewire_performance",), ("model", "version", "role", "metric"), by)
    estimated = _gather(families, ("scorewire_performance_estimated",), ("model", "version", "role", "metric"), by)
    alerts = _gather(families, ("scorewire_performance_alert",), ("model", "version", "role", "metric"), by)
    baseline = _gather(families, ("scorewire_performance_baseline",), ("model", "version", "metric"), by)
    rows_ = _gather(families, ("scorewire_performance_rows",), ("model", "version", "role"), by)
    out = []
    keys = sorted(set(realized) | set(estimated) | set(alerts))
    if keys:
        rows = []
        for m, v, r, k in keys:
            real = realized.get((m, v, r, k), {}).get("scorewire_performance")
            est = estimated.get((m, v, r, k), {}).get("scorewire_performance_estimated")
            base = baseline.get((m, v, k), {}).get("scorewire_performance_baseline")
            alert = alerts.get((m, v, r, k), {}).get("scorewire_performance_alert")
            n = rows_.get((m, v, r), {}).get("scorewire_performance_rows", 0)
            show = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
            rows.append([m, v, r, k, show(real), f"{n:,.0f}", show(est), show(base),
                         "-" if alert is None else "WORSE" if alert else "ok"])
        out.append(_table(["model", "version", "role", "metric", "realized", "labelled", "estimated", "baseline",
                           "alert"], rows))
    difference = _gather(families, ("scorewire_performance_difference",),
                         ("model", "champion", "challenger", "metric"), lambda _, sample: sample.labels["bound"])
    pairs = _gather(families, ("scorewire_performance_difference_pairs", "scorewire_performance_difference_pvalue"),
                    ("model", "champion", "challenger"), by)
    if pairs:
        rows = []
        for (m, c, h), v in sorted(pairs.items()):
            found = [(k, b) for (m2, c2, h2, k), b in difference.items() if (m2, c2, h2) == (m, c, h)]
            n = v.get("scorewire_performance_difference_pairs", 0)
            if not found:
                rows.append([m, c, h, "-", f"{n:,.0f}", "-", "-", "too few labelled pairs yet"])
                continue
            metric, b = found[0]
            verdict = _verdict("challenger", metric, b)
            rows.append([m, c, h, metric, f"{n:,.0f}", f"{b['estimate']:+.4g}", f"[{b['lower']:+.4g}, {b['upper']:+.4g}]",
                         f"{verdict} (p {v.get('scorewire_performance_difference_pvalue', 1):.3g})"])
        out.append(_table(["model", "champion", "challenger", "metric", "pairs", "difference",
                           "always-valid interval", "verdict"], rows))
    return out


def _quality(families: dict[str, list]) -> list[str]:
    """Guards (rows refused or flagged), conformal coverage and set size, group fairness."""
    out = []
    # (a counter's family is named without its _total: prometheus_client's parser)
    guards = _gather(families, ("scorewire_guard_rows",), ("model", "version", "guard", "action"),
                     lambda name, _: name)
    if guards:
        out.append(_table(["model", "version", "guard", "action", "rows"],
                          [[m, v, g, a, f"{x['scorewire_guard_rows']:,.0f}"]
                           for (m, v, g, a), x in sorted(guards.items())]))
    by = lambda name, _: name  # noqa: E731
    conformal = _gather(families, ("scorewire_conformal_coverage", "scorewire_conformal_set_size",
                                   "scorewire_conformal_alert"), ("model", "version", "role"), by)
    if conformal:
        out.append(_table(["model", "version", "role", "conformal coverage", "set size", "alert"],
                          [[m, v, r, f"{x.get('scorewire_conformal_coverage', float('nan')):.4g}",
                            f"{x.get('scorewire_conformal_set_size', float('nan')):.4g}",
                            "BELOW 1 - alpha" if x.get("scorewire_conformal_alert") else "ok"]
                           for (m, v, r), x in sorted(conformal.items())]))
    fairness = _gather(families, ("scorewire_fairness",), ("model", "version"), lambda _, sample: sample.labels["metric"])
    alerts = _gather(families, ("scorewire_fairness_alert",), ("model", "version"), by)
    if fairness or alerts:
        out.append(_table(["model", "version", "statistical parity difference", "disparate impact", "alert",
                           "equal opportunity difference"],
                          [[m, v, f"{fairness.get((m, v), {}).get('spd', float('nan')):+.4g}",
                            f"{fairness.get((m, v), {}).get('dir', float('nan')):.4g}",
                            "OUTSIDE its band" if x.get("scorewire_fairness_alert") else "ok",
                            f"{fairness.get((m, v), {}).get('eod', float('nan')):+.4g}"]
                           for (m, v), x in sorted(alerts.items())]))
    return out


def _data_quality(families: dict[str, list]) -> list[str]:
    """Per input feature: its shares of missing, out-of-range and unseen-category values over
    the monitor's smallest window, and which of its checks alert ("-": a check that does not
    apply to the feature, or not alerted)."""
    shares = _gather(families, ("scorewire_data_quality_share",), ("model", "version", "feature"),
                     lambda _, sample: sample.labels["check"])
    alerts = _gather(families, ("scorewire_data_quality_alert",), ("model", "version", "feature"),
                     lambda _, sample: sample.labels["check"])
    rows_ = _gather(families, ("scorewire_data_quality_window_rows",), ("model", "version"))
    if not shares:
        return []
    table = []
    for (m, v, f), x in shares.items():  # in the server's order: a version's features in their order
        alert = alerts.get((m, v, f), {})
        raised = [check for check, a in alert.items() if a]
        table.append([m, v, f, f"{rows_.get((m, v), {}).get('scorewire_data_quality_window_rows', 0):,.0f}"]
                     + [f"{x[check]:.4g}" if check in x else "-" for check in ("missing", "out_of_range",
                                                                              "unseen_category")]
                     + ["QUALITY: " + ", ".join(raised) if raised else "ok" if alert else "-"])
    return [_table(["model", "version", "feature", "rows", "missing", "out of range", "unseen category", "alert"],
                   table)]


def _segments(families: dict[str, list]) -> list[str]:
    """Per segment: rows scored, score drift (KS D against the reference's rows of the segment)
    and, per role, the realized performance of its rows in the version's labelled window."""
    by = lambda name, _: name  # noqa: E731
    scored = _gather(families, ("scorewire_segment_rows", "scorewire_segment_score_drift"),
                     ("model", "version", "segment"), by)  # (in the server's order: a column's segments together)
    performance = _gather(families, ("scorewire_segment_performance",), ("model", "version", "role", "segment"),
                          lambda _, sample: sample.labels["metric"])
    labelled = _gather(families, ("scorewire_segment_performance_rows",), ("model", "version", "role", "segment"), by)
    if not scored:
        return []
    metrics = list(dict.fromkeys(k for values in performance.values() for k in values))
    roles: dict[tuple, list[str]] = {}
    for m, v, r, segment in labelled:
        roles.setdefault((m, v, segment), []).append(r)
    rows = []
    for (m, v, segment), x in scored.items():
        drift = x.get("scorewire_segment_score_drift")
        first = [m, v, segment, f"{x.get('scorewire_segment_rows', 0):,.0f}", "-" if drift is None else f"{drift:.3f}"]
        for r in sorted(roles.get((m, v, segment), [])) or ["-"]:
            values = performance.get((m, v, r, segment), {})
            n = labelled.get((m, v, r, segment), {}).get("scorewire_segment_performance_rows", 0)
            rows.append(first + [r, f"{n:,.0f}"] + [f"{values[k]:.4g}" if k in values else "-" for k in metrics])
    return [_table(["model", "version", "segment", "scored", "score drift (KS D)", "role", "labelled", *metrics],
                   rows)]


def _splits(families: dict[str, list]) -> list[str]:
    """Each plain split's arm against its champion: the always-valid interval and a verdict."""
    difference = _gather(families, ("scorewire_split_difference",), ("model", "champion", "arm", "metric"),
                         lambda _, sample: sample.labels["bound"])
    rows_ = _gather(families, ("scorewire_split_labelled_rows", "scorewire_split_weight"), ("model", "version"),
                    lambda name, _: name)
    if not difference:
        return []
    weighted = any("scorewire_split_weight" in x for x in rows_.values())  # a bandit split's weights, now
    table = []
    for (model, champion, arm, metric), b in sorted(difference.items()):
        verdict = _verdict("arm", metric, b)
        n = lambda v: rows_.get((model, v), {}).get("scorewire_split_labelled_rows", 0)  # noqa: E731
        weight = rows_.get((model, arm), {}).get("scorewire_split_weight")
        table.append([model, champion, arm, metric, f"{n(arm):,.0f} / {n(champion):,.0f}", f"{b['estimate']:+.4g}",
                      f"[{b['lower']:+.4g}, {b['upper']:+.4g}]", verdict]
                     + ([] if not weighted else ["fixed" if weight is None else f"{weight:.1f}% (bandit)"]))
    return [_table(["model", "champion", "arm", "metric", "labelled (arm / champ)", "difference",
                    "always-valid interval", "verdict", *(["weight now"] if weighted else [])], table)]


def _rollouts(families: dict[str, list]) -> list[str]:
    """Each rollout: where it stands (state, step, weights), its labelled rows, the difference
    and its always-valid interval, and why."""
    states = {}
    for sample in families.get("scorewire_rollout_state", []):
        if sample.value == 1:
            states[sample.labels["model"]] = (sample.labels["candidate"], sample.labels["state"])
    if not states:
        return []
    by = lambda name, sample: name  # noqa: E731
    steps = _gather(families, ("scorewire_rollout_step",), ("model",), by)
    weights = _gather(families, ("scorewire_rollout_weight",), ("model", "version"), by)
    rows_ = _gather(families, ("scorewire_rollout_labelled_rows",), ("model", "arm"), by)
    difference = _gather(families, ("scorewire_rollout_difference",), ("model", "metric"),
                         lambda _, sample: sample.labels["bound"])
    reasons = {s.labels["model"]: s.labels.get("reason", "") for s in families.get("scorewire_rollout_reason", [])}
    table = []
    for model, (candidate, state) in sorted(states.items()):
        weight = weights.get((model, candidate), {}).get("scorewire_rollout_weight", 0)
        found = [(metric, b) for (m, metric), b in difference.items() if m == model]
        shown = (f"{found[0][0]} {found[0][1]['estimate']:+.4g} [{found[0][1]['lower']:+.4g}, "
                 f"{found[0][1]['upper']:+.4g}]") if found else "-"
        table.append([model, candidate, state, f"{steps.get((model,), {}).get('scorewire_rollout_step', 0):.0f}",
                      f"{weight:g}%",
                      f"{rows_.get((model, 'candidate'), {}).get('scorewire_rollout_labelled_rows', 0):,.0f} / "
                      f"{rows_.get((model, 'champion'), {}).get('scorewire_rollout_labelled_rows', 0):,.0f}",
                      shown, reasons.get(model, "")])
    return [_table(["model", "candidate", "state", "step", "weight", "labelled (cand / champ)",
                    "difference (always-valid)", "why"], table)]


def _memory(families: dict[str, list]) -> list[str]:
    """RSS and PSS of each process of the server (a server of several workers: the observer
    reads them every few seconds), and the server's total PSS: what it costs the machine."""
    mib = 1 << 20
    usage = _gather(families, ("scorewire_process_rss_bytes", "scorewire_process_pss_bytes"), ("process", "slot"))
    if not usage:
        return []
    order = {"supervisor": 0, "observer": 2, "challengers": 3, "other": 4}
    keys = sorted(usage, key=lambda k: (order.get(k[0], 1), int(k[1]) if k[1].isdigit() else 0))
    rows = [[p if p != "worker" else f"worker {slot}", f"{usage[(p, slot)].get('scorewire_process_rss_bytes', 0) / mib:.1f}",
             f"{usage[(p, slot)].get('scorewire_process_pss_bytes', 0) / mib:.1f}"] for p, slot in keys]
    total = sum(v.get("scorewire_process_pss_bytes", 0) for v in usage.values())
    rows.append([f"all {len(keys)}", "-", f"{total / mib:.1f}"])
    return [_table(["process", "RSS MiB", "PSS MiB"], rows)]


def status(target: str, timeout_s: float = 5.0) -> str:
    families = scrape(target, timeout_s)
    drift = _gather(families, ("scorewire_drift_statistic", "scorewire_drift_pvalue", "scorewire_drift_effect",
                               "scorewire_drift_window_fired"), ("model", "version", "feature", "window"),
                    lambda name, _: name.rsplit("_", 1)[1])
    alerts = _gather(families, ("scorewire_drift_alert",), ("model", "version", "feature"))
    windows = _gather(families, ("scorewire_drift_window_rows", "scorewire_drift_window_size"),
                      ("model", "version", "window"))
    out = []
    if alerts:
        rows = []
        for (m, v_, f), a in sorted(alerts.items()):
            alert = "DRIFT" if a.get("scorewire_drift_alert") else "ok"
            sizes = sorted({w for (m2, v2, w) in windows if (m2, v2) == (m, v_)}, key=int)
            for w in sizes:
                v, seen = drift.get((m, v_, f, w), {}), windows.get((m, v_, w), {})
                if "pvalue" not in v:  # not evaluated yet (or not computed at the last evaluation)
                    fill = f"{seen.get('scorewire_drift_window_rows', 0):,.0f}/{int(w):,}"
                    filling = seen.get("scorewire_drift_window_rows", 0) < int(w)
                    state = f"not evaluated yet (window {fill})" if filling else "evaluated (below its threshold)"
                    # a window not evaluated yet has no statistic (nor p-value, nor effect)
                    statistic = f"{v['statistic']:.4g}" if "statistic" in v and not filling else "-"
                    rows.append([m, v_, f, f"{int(w):,}", statistic, "-", "-",
                                 state if alert == "ok" else f"{alert}; window {state}"])
                    continue
                fired = ", window fired" if v.get("fired") else ""
                rows.append([m, v_, f, f"{int(w):,}", f"{v['statistic']:.4g}", f"{v['pvalue']:.3g}",
                             f"{v.get('effect', 0):.4g}", alert + fired])
        out.append(_table(["model", "version", "feature", "window", "statistic", "p-value", "effect", "alert"], rows))
    else:
        out.append("no drift monitors configured")
    out += _data_quality(families)
    out += _performance(families)
    out += _rollouts(families)
    out += _splits(families)
    out += _quality(families)
    out += _segments(families)
    streams = _gather(families, ("scorewire_stream_up", "scorewire_stream_brokers_reachable",
                                 "scorewire_stream_input_missing", "scorewire_stream_in_flight",
                                 "scorewire_stream_consumed", "scorewire_stream_lag_events",
                                 "scorewire_stream_stalled_partitions"), ("stream", "model"))
    if streams:
        rows = []
        for (stream, model), v in sorted(streams.items()):
            state = ("stopped (see the server log)" if not v.get("scorewire_stream_up", 1) else
                     "no broker reachable (see the server log)" if not v.get("scorewire_stream_brokers_reachable", 1)
                     else "waiting for its input topic (it does not exist)" if v.get("scorewire_stream_input_missing")
                     else f"{v['scorewire_stream_stalled_partitions']:.0f} partitions stalled (see the server log)"
                     if v.get("scorewire_stream_stalled_partitions") else "consuming")
            rows.append([stream, model, state, f"{v.get('scorewire_stream_consumed', 0):,.0f}",
                         f"{v.get('scorewire_stream_in_flight', 0):,.0f}", f"{v.get('scorewire_stream_lag_events', 0):,.0f}"])
        out.append(_table(["stream", "model", "state", "consumed", "in flight", "lag"], rows))
    latency = _gather(families, ("scorewire_latency_us",), ("model", "version", "role", "stage"),
                      lambda _, sample: sample.labels["quantile"])
    if latency:
        quantiles = sorted({q for v in latency.values() for q in v}, key=float)
        rows = [[m, v_, r, s] + [f"{v.get(q, 0) / 1000:.3f}" for q in quantiles]
                for (m, v_, r, s), v in sorted(latency.items())]
        out.append(_table(["model", "version", "role", "stage"] + [f"p{float(q) * 100:g} ms" for q in quantiles], rows))
    else:
        out.append("no latency recorded yet")
    out += _memory(families)
    return "\n\n".join(out)
