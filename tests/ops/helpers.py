"""Shared steps of the monitoring tests: where the rules and the dashboard are, the
Prometheus binaries and a real Prometheus server, and reading metric names out of
PromQL and /metrics pages.

The rule file is read line by line (the test environment has no YAML parser):
`rule_expressions` understands the two forms the file uses, `expr: <one line>`
and `expr: >-` followed by an indented block, and the tests compare the count
it finds with the count `promtool check rules` reports, so a form it does not
understand fails loudly instead of hiding a rule.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from chaos.cluster import free_port, stop_process

REPO = Path(__file__).resolve().parent.parent.parent
RULES = REPO / "deploy" / "prometheus" / "ringcast-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "ringcast-rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "ringcast.json"

# Series Prometheus makes itself rather than scraping them.
SYNTHETIC = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}

# Words of PromQL that look like metric names but are not.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "atan2", "inf", "nan", "Inf", "NaN"}


def binary(name: str) -> str:
    """The path of `promtool` or `prometheus`; fails (never skips) with what to do when missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run scripts/bootstrap.sh (it installs the Debian `prometheus` package, "
                    f"which provides promtool and prometheus)")
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def rule_expressions(path: Path = RULES) -> dict[str, str]:
    """{alert name: its PromQL expression} of a rule file written in this repository's style."""
    found: dict[str, str] = {}
    lines = path.read_text().splitlines()
    name = None
    i = 0
    while i < len(lines):
        line = lines[i]
        alert = re.match(r"\s*- (?:alert|record): (\S+)\s*$", line)
        if alert:
            name = alert.group(1)
        expr = re.match(r"(\s*)expr: (.*)$", line)
        if expr:
            if name is None or name in found:
                raise ValueError(f"{path}:{i + 1}: an expr without its own alert/record line")
            indent, value = len(expr.group(1)), expr.group(2).strip()
            if value in (">-", ">", "|", "|-"):
                block = []
                while i + 1 < len(lines) and (not lines[i + 1].strip() or len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent):
                    i += 1
                    block.append(lines[i].strip())
                value = " ".join(part for part in block if part)
            elif value[:1] in ("'", '"'):
                value = value[1:-1]
            found[name] = value
        i += 1
    return found


def rule_count_by_promtool(path: Path = RULES) -> int:
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, f"promtool check rules {path} failed:\n{result.stdout}{result.stderr}"
    return int(re.search(r"SUCCESS: (\d+) rules found", result.stdout).group(1))


def dashboard_expressions(path: Path = DASHBOARD) -> dict[str, str]:
    """{where: PromQL} for every panel target and every query variable of a Grafana dashboard."""
    dashboard = json.loads(path.read_text())
    found: dict[str, str] = {}

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found[f"panel {panel['title']!r} target {target['refId']}"] = target["expr"]
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            # Grafana's own functions: label_values(metric, label), query_result(promql), metrics(regex).
            inner = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
            query = inner.group(1) if inner else re.sub(r"^\s*query_result\((.*)\)\s*$", r"\1", query)
            found[f"variable {variable['name']!r}"] = query
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (as written: `x_bucket` stays `x_bucket`).

    A name is an identifier that is not a function or aggregation (followed by
    `(`), not a keyword, and not inside a string, a label matcher `{...}`, a
    range `[...]` or a grouping clause `by (...)`.
    """
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # strings
    text = re.sub(r"\{[^{}]*\}", "{}", text)  # label matchers (their strings are gone already)
    text = re.sub(r"\[[^\[\]]*\]", "[]", text)  # ranges, subqueries, Grafana's $__rate_interval
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables outside matchers
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?=\s*(\(?))", text):
        name, call = match.groups()
        if call or name in KEYWORDS:
            continue
        names.add(name)
    return names


def sample_names(page: str) -> set[str]:
    """Names of the samples of a Prometheus text page (a histogram shows as x_bucket, x_sum, x_count)."""
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in page.splitlines() if line and not line.startswith("#")}


def unexported(expressions: dict[str, str], exported: set[str]) -> dict[str, list[str]]:
    """{metric name: [where it is used]} for every name no process exports (nor Prometheus makes)."""
    missing: dict[str, list[str]] = {}
    for where, expr in expressions.items():
        for name in sorted(metric_names(expr) - exported - SYNTHETIC):
            missing.setdefault(name, []).append(where)
    return missing


def static_jobs(jobs: dict[str, list[str]]) -> list[dict]:
    """Scrape configs with fixed targets: {job name: [host:port, ...]}."""
    return [{"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in jobs.items()]


def control_sd_job(control_url: str, interval_s: float = 1.0) -> list[dict]:
    """The one scrape config docs/monitoring.md recommends: every target from a control replica's
    GET /v1/sd/prometheus (the answer's `job` label names each target's job), refreshed every `interval_s`."""
    interval = f"{int(interval_s * 1000)}ms"
    return [{"job_name": "ringcast",
             "http_sd_configs": [{"url": f"{control_url}/v1/sd/prometheus", "refresh_interval": interval}]}]


class PrometheusServer:
    """A real `prometheus` on a free loopback port with the given scrape configs and the rules loaded.

    Scrapes and evaluates every `interval_s`; its TSDB lives in `workdir`. Stopped by its PID.
    """

    def __init__(self, workdir: Path, scrape_configs: list[dict], rule_files: list[Path], interval_s: float = 1.0):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        interval = f"{int(interval_s * 1000)}ms"
        config = {  # JSON is YAML: no YAML writer needed
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": scrape_configs,
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "prometheus.log"

    def start(self) -> "PrometheusServer":
        command = [binary("prometheus"), f"--config.file={self.config_path}",
                   f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.tsdb.path={self.workdir / 'data'}"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text()[-5000:] if self.log_path.exists() else ""

    def api(self, path: str, **params: str):
        """The `data` of one HTTP API answer; raises if Prometheus exited or answered an error."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}; log:\n{self.log()}")
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=2) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{url}: {body}")
        return body["data"]

    def query(self, promql: str) -> dict[str, float]:
        """{instance: value} of an instant query's vector (one sample per instance)."""
        return {sample["metric"].get("instance", ""): float(sample["value"][1])
                for sample in self.api("/api/v1/query", query=promql)["result"]}

    def alerts(self) -> list[dict]:
        return self.api("/api/v1/alerts")["alerts"]
