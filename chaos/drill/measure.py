"""Turning what a drill recorded into numbers, and numbers into PASS or FAIL.

Owns the definitions every report uses (all times in seconds from the fault):

- detection: the first client-visible symptom after the fault (a
  disconnect or an error), plus scenario-specific server-side signals;
- reconnected: when every member is joined again (and stays so);
- recovered: when every member is connected *and* has received a message
  that was published after the fault ended (so "receiving again", not just
  "connected");
- lost: acked messages some member of the room never accepted, after the
  settle period; duplicates and out-of-order as the members counted them;
- p99 latency (publisher clock -> member receive) before / during / after,
  where during = fault start .. recovered;
- worker memory: RSS baseline (just before the fault), peak, and end.

It must not talk to servers or clients; it reads the Ledger, the samples and
the marks the runner took.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

from chaos.drill.client import Ledger


@dataclass
class Thresholds:
    """Pass criteria of one drill run; None means reported but not judged."""

    max_lost: int = 0
    max_duplicates: int = 0
    max_out_of_order: int = 0
    max_recovery_s: float | None = None
    max_p99_after_ms: float | None = None  # floor of the after-latency bound ...
    max_p99_after_vs_before: float = 2.0  # ... which is max(floor, this x p99 before): "back to its pre-fault level"
    extra: dict = field(default_factory=dict)  # scenario-specific, judged by the scenario

    def describe(self) -> list[str]:
        lines = [f"lost acked messages <= {self.max_lost}", f"duplicates <= {self.max_duplicates}",
                 f"out-of-order <= {self.max_out_of_order}",
                 "every member connected and receiving again (a message published after the fault)"]
        if self.max_recovery_s is not None:
            lines.append(f"recovery <= {self.max_recovery_s:g} s")
        if self.max_p99_after_ms is not None:
            lines.append(f"p99 latency after recovery <= max({self.max_p99_after_ms:g} ms, "
                         f"{self.max_p99_after_vs_before:g} x p99 before the fault)")
        lines += [f"{k}: {v}" for k, v in self.extra.items()]
        return lines


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def _window(ledger: Ledger, start: float, end: float) -> list[float]:
    return [ms for at, ms in zip(ledger.latency_at_s, ledger.latency_ms) if start <= at < end]


def _stats(values: list[float]) -> dict:
    return {"samples": len(values), "p50_ms": _round(percentile(values, 0.5)), "p99_ms": _round(percentile(values, 0.99)),
            "max_ms": _round(max(values) if values else None)}


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def measure(ledger: Ledger, members: list, clients: int, marks: dict[str, float], samples: list[dict],
            lost: int, lost_detail: list[dict]) -> dict:
    """All numbers of one run. `marks` holds times (ledger clock) of: publish_start, fault_start, fault_end,
    publish_stop, settled. `samples` are periodic {t, connected, rss: {pid: bytes}}."""
    fault = marks["fault_start"]
    stop = marks["publish_stop"]

    symptoms = [t for t in ledger.disconnects if t >= fault] + [t for t, _ in ledger.error_times if t >= fault]
    detection_s = (min(symptoms) - fault) if symptoms else None

    # reconnected: the end of the last sample (after the fault, before publishing stopped) with a member missing
    short_of_all = [s["t"] for s in samples if fault <= s["t"] <= stop and s["connected"] < clients]
    reconnected_s = (max(short_of_all) - fault) if short_of_all else 0.0
    firsts = [m.first_after_fault_s for m in members]
    never = sum(1 for t in firsts if t is None)
    recovered_at = None
    if never == 0 and members:
        recovered_at = max(max(firsts), fault + reconnected_s)
    recovery_s = None if recovered_at is None else recovered_at - fault

    before_start = marks["publish_start"]
    during_end = recovered_at if recovered_at is not None else stop
    latency = {
        "before": _stats(_window(ledger, before_start, fault)),
        "during": _stats(_window(ledger, fault, during_end)),
        "after": _stats(_window(ledger, during_end, stop + 5)) if recovered_at is not None else _stats([]),
    }

    totals_before = [sum(s["rss"].values()) for s in samples if s["t"] < fault and s["rss"]]
    totals = [sum(s["rss"].values()) for s in samples if s["rss"]]
    per_pid_peak: dict[int, int] = {}
    per_pid_base: dict[int, int] = {}
    for sample in samples:
        for pid, rss in sample["rss"].items():
            per_pid_peak[pid] = max(per_pid_peak.get(pid, 0), rss)
            if sample["t"] < fault:
                per_pid_base[pid] = rss
    growth = [per_pid_peak[pid] - base for pid, base in per_pid_base.items()]
    memory = {
        "workers_rss_baseline_mb": _mb(totals_before[-1] if totals_before else None),
        "workers_rss_peak_mb": _mb(max(totals) if totals else None),
        "workers_rss_end_mb": _mb(totals[-1] if totals else None),
        "max_worker_growth_mb": _mb(max(growth) if growth else None),
    }

    delivered = sum(ledger.delivered_per_s.values())
    acked = sum(len(v) for v in ledger.acked.values())
    return {
        "clients": clients,
        "detection_s": _round(detection_s),
        "reconnected_s": _round(reconnected_s),
        "recovery_s": _round(recovery_s),
        "members_never_receiving_again": never,
        "acked": acked,
        "publish_attempts": ledger.publish_attempts,
        "delivered": delivered,
        "lost": lost,
        "lost_detail": lost_detail,
        "duplicates": ledger.duplicates,
        "out_of_order": ledger.out_of_order,
        "gaps_while_connected": ledger.gaps_while_connected,
        "declared_losses": ledger.declared_losses,
        "resumes": dict(ledger.resumes),
        "disconnects": len(ledger.disconnects),
        "client_errors": dict(ledger.errors),
        "client_errors_total": sum(v for k, v in ledger.errors.items() if not k.startswith("reconnect_notice")),
        "client_error_samples": dict(ledger.error_samples),
        "client_errors_after_fault": dict(collections.Counter(k for t, k in ledger.error_times if t >= fault)),
        "gap_samples": ledger.gap_samples,
        "latency": latency,
        "memory": memory,
        "settle_s": _round(marks.get("settled", stop) - stop),
    }


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value / 1e6, 1)


def judge(results: dict, thresholds: Thresholds) -> list[str]:
    """The reasons this run fails its thresholds (empty: PASS)."""
    failures = []
    if results["lost"] > thresholds.max_lost:
        failures.append(f"{results['lost']} acked messages never reached a member of their room (max {thresholds.max_lost})")
    if results["duplicates"] > thresholds.max_duplicates:
        failures.append(f"{results['duplicates']} duplicate deliveries (max {thresholds.max_duplicates})")
    if results["out_of_order"] > thresholds.max_out_of_order:
        failures.append(f"{results['out_of_order']} out-of-order deliveries (max {thresholds.max_out_of_order})")
    if results["recovery_s"] is None:
        failures.append(f"{results['members_never_receiving_again']} members never received a message published "
                        "after the fault")
    elif thresholds.max_recovery_s is not None and results["recovery_s"] > thresholds.max_recovery_s:
        failures.append(f"recovery took {results['recovery_s']:.2f} s (max {thresholds.max_recovery_s:g} s)")
    p99_after = results["latency"]["after"]["p99_ms"]
    p99_before = results["latency"]["before"]["p99_ms"] or 0.0
    if thresholds.max_p99_after_ms is not None and p99_after is not None:
        bound = max(thresholds.max_p99_after_ms, thresholds.max_p99_after_vs_before * p99_before)
        if p99_after > bound:
            failures.append(f"p99 latency after recovery {p99_after:.1f} ms (max {bound:.1f} ms: "
                            f"{thresholds.max_p99_after_ms:g} ms or {thresholds.max_p99_after_vs_before:g} x before)")
    return failures
