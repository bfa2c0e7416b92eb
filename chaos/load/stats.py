"""What one load-generator process counts, in a form that merges across processes.

Owns the latency histogram (fixed 0.1 ms buckets, so merging is adding
counts and percentiles are exact to a bucket) and the delivery tally
(frames, duplicates, gaps, reordered, errors). Plain dicts and ints only, so a
tally crosses a multiprocessing pipe as is. It must not open sockets or
decide what a result means (chaos/bench/cli.py does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

BUCKET_US = 100  # histogram resolution: 0.1 ms
MAX_BUCKET = 600_000  # 60 s; slower deliveries land in the last bucket


def add_latency(histogram: dict[int, int], latency_ns: int) -> None:
    bucket = latency_ns // (BUCKET_US * 1000)
    if bucket > MAX_BUCKET:
        bucket = MAX_BUCKET
    histogram[bucket] = histogram.get(bucket, 0) + 1


def merge_histograms(into: dict[int, int], other: dict[int, int]) -> None:
    for bucket, count in other.items():
        into[bucket] = into.get(bucket, 0) + count


def percentile_ms(histogram: dict[int, int], fraction: float) -> float | None:
    """The upper edge (ms) of the bucket holding the given fraction of samples."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return (bucket + 1) * BUCKET_US / 1000
    return (max(histogram) + 1) * BUCKET_US / 1000


def mean_ms(histogram: dict[int, int]) -> float | None:
    """Mean latency from bucket midpoints (error at most half a bucket)."""
    total = sum(histogram.values())
    if total == 0:
        return None
    return sum((bucket + 0.5) * count for bucket, count in histogram.items()) * BUCKET_US / 1000 / total


@dataclass
class Tally:
    """Counts of one process (or, merged, of the whole run)."""

    connected: int = 0  # sockets joined to their room right now
    connect_failures: int = 0  # connections given up after their retries
    closed_by_server: int = 0  # connections the server closed or cut during the run
    frames_total: int = 0  # `message` frames received, every connection, whole run
    frames_in_window: int = 0  # `message` frames received inside the measurement window
    published: int = 0  # `message` frames sent, whole run
    published_in_window: int = 0
    sampled_frames: int = 0  # frames whose JSON was decoded and verified (sampled connections)
    duplicates: int = 0  # sampled: a seq seen before (same epoch)
    gaps: int = 0  # sampled: seq jumped past last + 1 (one count per jump)
    gap_messages: int = 0  # sampled: messages skipped by those jumps
    reordered: int = 0  # sampled: a skipped seq that came after all, late (below the highest seen)
    errors: dict[str, int] = field(default_factory=dict)  # server `error` frames by code
    error_examples: dict[str, str] = field(default_factory=dict)  # the first `message` of each code
    latency_window: dict[int, int] = field(default_factory=dict)  # sampled, inside the window
    latency_all: dict[int, int] = field(default_factory=dict)  # sampled, whole run

    def as_dict(self) -> dict:
        return asdict(self)

    def merge(self, other: "Tally") -> None:
        for name in ("connected", "connect_failures", "closed_by_server", "frames_total", "frames_in_window",
                     "published", "published_in_window", "sampled_frames", "duplicates", "gaps", "gap_messages",
                     "reordered"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for code, count in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + count
        for code, text in other.error_examples.items():
            self.error_examples.setdefault(code, text)
        merge_histograms(self.latency_window, other.latency_window)
        merge_histograms(self.latency_all, other.latency_all)

    @classmethod
    def from_dict(cls, raw: dict) -> "Tally":
        tally = cls(**{k: v for k, v in raw.items() if k not in ("errors", "error_examples", "latency_window", "latency_all")})
        tally.errors = dict(raw["errors"])
        tally.error_examples = dict(raw["error_examples"])
        tally.latency_window = {int(k): v for k, v in raw["latency_window"].items()}
        tally.latency_all = {int(k): v for k, v in raw["latency_all"].items()}
        return tally
