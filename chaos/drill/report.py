"""A drill's reports: JSON (everything), Markdown (the summary an operator reads), PNG (the timeline).

Owns the file names (`drill-<scenario>-<UTC time>.{json,md,png}` in the
output directory) and the layout of each report. The PNG has two panels on
one time axis: messages delivered per second (and acked per second), and
connected members, with the fault shaded and recovery marked. It must not
compute results (chaos/drill/measure.py does).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def base_name(scenario: str) -> str:
    return f"drill-{scenario}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


def write_json(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}{unit}" if abs(value) < 1000 else f"{value:.0f}{unit}"
    return f"{value}{unit}"


def markdown(report: dict) -> str:
    r = report["results"]
    lat = r["latency"]
    mem = r["memory"]
    lines = [
        f"# Drill `{report['scenario']}`: **{report['verdict']}**",
        "",
        f"- command: `{report['command']}`",
        f"- injected: {report['injects']}",
        f"- started {report['started_utc']} UTC, {report['duration_s']:.1f} s, "
        f"{'short (CI) size' if report['short'] else 'full size'}",
        *([f"- fleet: {len(report['cluster']['hosts'])} hosts (network namespaces) on {report['cluster']['network']}, "
           f"bridge {report['cluster']['bridge_address']}; client liveness check {report.get('client_liveness_s')} s"]
          if report.get("cluster", {}).get("hosts") else []),
        f"- population: {r['clients']} members, {report['size']['rooms']} rooms, {report['size']['publishers']} publishers "
        f"at {report['size']['publish_rate_per_s']:g} msg/s total",
        "",
    ]
    if report["failures"]:
        lines += ["## Why it failed", ""] + [f"- {f}" for f in report["failures"]] + [""]
    lines += [
        "## Results",
        "",
        "| measure | value |",
        "|---|---|",
        f"| detection (first client-visible symptom) | {_fmt(r['detection_s'], ' s')} |",
        f"| every member connected again | {_fmt(r['reconnected_s'], ' s')} |",
        f"| every member receiving again (recovery) | {_fmt(r['recovery_s'], ' s')} |",
        f"| acked messages / delivered | {r['acked']} / {r['delivered']} |",
        f"| lost after resume | {r['lost']} |",
        f"| duplicates / out of order | {r['duplicates']} / {r['out_of_order']} |",
        f"| gaps on live connections (repaired by re-joining with since) | {r['gaps_while_connected']} |",
        f"| resumes (joined.recovered / reason) | {r['resumes'] or '-'} |",
        f"| member disconnects | {r['disconnects']} |",
        f"| client-visible errors | {r['client_errors_total']} {r['client_errors'] or ''} |",
        f"| p99 latency before / during / after | {_fmt(lat['before']['p99_ms'], ' ms')} / "
        f"{_fmt(lat['during']['p99_ms'], ' ms')} / {_fmt(lat['after']['p99_ms'], ' ms')} |",
        f"| worker RSS baseline / peak / end (all workers) | {_fmt(mem['workers_rss_baseline_mb'], ' MB')} / "
        f"{_fmt(mem['workers_rss_peak_mb'], ' MB')} / {_fmt(mem['workers_rss_end_mb'], ' MB')} |",
    ]
    for key, value in report["details"].items():
        if isinstance(value, dict) and value and len(value) > 3:  # a scenario's cycle: one row per measure
            for sub, subvalue in value.items():
                lines.append(f"| {key.replace('_', ' ')}: {sub.replace('_', ' ')} | {subvalue} |")
        else:
            lines.append(f"| {key.replace('_', ' ')} | {value} |")
    lines += ["", "## Thresholds", ""] + [f"- {t}" for t in report["thresholds"]] + [""]
    if report.get("files", {}).get("png"):
        lines += [f"![timeline]({os.path.basename(report['files']['png'])})", ""]
    return "\n".join(lines)


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed: the report is written without its PNG timeline."""


def plot(path: Path, report: dict) -> None:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(
            "no PNG timeline: matplotlib is not installed (pip install 'ringcast[reports]'; "
            "the README's commands install it)"
        ) from None

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    marks = report["marks"]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    seconds = timeline["seconds"]
    top.bar(seconds, timeline["delivered_per_s"], width=1.0, align="edge", color="#4878a8", label="delivered / s")
    top.plot([s + 0.5 for s in seconds], timeline["acked_per_s"], color="#d07020", label="acked (published) / s")
    top.set_ylabel("messages per second")
    top.legend(loc="upper right")
    bottom.plot(timeline["sample_t"], timeline["connected"], color="#308030", label="connected members")
    bottom.set_ylabel("connected members")
    bottom.set_xlabel("seconds since the drill's clients started")
    bottom.set_ylim(bottom=0)
    for axis in (top, bottom):
        if "fault_start" in marks:
            end = max(marks.get("fault_end", marks["fault_start"]), marks["fault_start"] + 0.2)
            axis.axvspan(marks["fault_start"], end, color="#c03030", alpha=0.3, label="fault")
        if report["results"].get("recovery_s") is not None:
            axis.axvline(marks["fault_start"] + report["results"]["recovery_s"], color="#308030", linestyle="--")
        for name in ("publish_start", "publish_stop"):
            if name in marks:
                axis.axvline(marks[name], color="#888888", linestyle=":")
        if "heal" in marks:  # a fault that is a state (a cut link) ends when it is healed
            axis.axvspan(marks["fault_start"], marks["heal"], color="#c03030", alpha=0.08)
            axis.axvline(marks["heal"], color="#c03030", linestyle="-.", label="healed")
    bottom.legend(loc="lower right")
    fig.suptitle(f"ringcast drill {report['scenario']}: {report['verdict']}  "
                 "(red: fault" + ("; light red to dash-dot: cut until healed" if "heal" in marks else "")
                 + "; dashed: every member receiving again; dotted: publishing on/off)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(out_dir: Path, report: dict) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / base_name(report["scenario"])
    files = {"json": str(base.with_suffix(".json")), "md": str(base.with_suffix(".md")),
             "png": str(base.with_suffix(".png"))}
    report["files"] = files
    try:
        plot(Path(files["png"]), report)
    except PlotUnavailable as exc:
        report["plot_error"] = str(exc)
        files["png"] = ""
    except Exception as exc:  # noqa: BLE001 - a broken plot must not hide the verdict
        report["plot_error"] = repr(exc)
        files["png"] = ""
    write_json(Path(files["json"]), report)
    Path(files["md"]).write_text(markdown(report))
    return files
