"""The load generator's reports: one run's result dict as bench.json and bench.md.

Owns the file names and the Markdown layout (the tutorial's columns first,
then loss and verification). It must not compute results (chaos/bench/cli.py
does) or run anything.
"""

from __future__ import annotations

import json
import os


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(result: dict) -> str:
    rss_end = sum(result["server_rss_end_mib"])
    lines = [
        f"# ringcast bench{': ' + result['label'] if result['label'] else ''}"
        + (" (the tutorial's server)" if result.get("server") == "seed" else ""),
        "",
        f"`{result['command']}`",
        "",
        "| Concurrent connections | Delivered msg/s | Avg latency | p99 latency | Server memory | Server CPU |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {_fmt(result['connections'])} | {_fmt(result['delivered_per_s'])} | {_fmt(result['latency_avg_ms'])} ms "
        f"| {_fmt(result['latency_p99_ms'])} ms | {rss_end:,.1f} MiB "
        f"({_fmt(result['server_rss_per_connection_kib'])} KiB/conn) | {_fmt(result['server_cpu_percent'])} % |",
        "",
        "| Published/s | Expected deliveries | Lost | Duplicates | Gaps | Reordered | Unsequenced publishes | Errors "
        "| Closed by server | Connect failures |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {_fmt(result['published_per_s'])} | {_fmt(result['expected_deliveries'])} | {_fmt(result['lost'])} "
        f"| {_fmt(result['duplicates'])} | {_fmt(result['gaps'])} | {_fmt(result.get('reordered'))} "
        f"| {_fmt(result['unsequenced_publishes'])} "
        f"| {result['errors'] or 0} | {_fmt(result['closed_by_server'])} | {_fmt(result['connect_failures'])} |",
        "",
        (f"- {result['workers']} worker(s), {result['rooms']} room(s), arrival phases {result['phases']} "
         "(DURATION_S:USERS_PER_S; connections = most users joined at once); "
         if result["mode"] == "arrival" else
         f"- {result['workers']} worker(s), {result['rooms']} room(s), {result['publishers']} publisher(s) at "
         f"{_fmt(result['rate_per_publisher_s'])} msg/s each; ")
        + f"{result['warmup_s']} s warm-up excluded, {result['measured_s']} s measured.",
        f"- latency p50 {_fmt(result['latency_p50_ms'])} ms, max {_fmt(result['latency_max_ms'])} ms over "
        f"{_fmt(result['latency_samples'])} samples (every frame of 1 connection in {result['sample_every']} "
        "and of every publisher is decoded; all frames are counted).",
        f"- server CPU {_fmt(result['server_cpu_us_per_delivery'])} us per delivered message "
        f"({_fmt(result.get('server_system_us_per_delivery'))} us of it in the kernel; "
        f"{_fmt(result.get('server_deliveries_per_cpu_s'))} deliveries per CPU-second); "
        f"Redis CPU {_fmt(result.get('redis_cpu_percent'))} %, {_fmt(result.get('redis_cpu_us_per_publish'))} us "
        "per published message; "
        f"load generator CPU {_fmt(result['client_cpu_percent'])} % ({result['load_processes']} processes, "
        f"{result['source_ips']} source address(es)).",
        f"- worker RSS MiB before connecting {result['server_rss_before_mib']}, connected "
        f"{result['server_rss_connected_mib']}, end {result['server_rss_end_mib']}.",
    ]
    if result.get("node_flags"):
        lines.append(f"- node started with `{' '.join(result['node_flags'])}`.")
    return "\n".join(lines) + "\n"


def write_reports(result: dict, directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, "bench.json")
    md_path = os.path.join(directory, "bench.md")
    with open(json_path, "w") as handle:
        json.dump(result, handle, indent=2, sort_keys=True)
    with open(md_path, "w") as handle:
        handle.write(markdown(result))
    return [json_path, md_path]
