"""``octavo bench plot``: output-token throughput against concurrency, one line per server."""

from __future__ import annotations

import json
from pathlib import Path


def matplotlib_available() -> bool:
    """Whether matplotlib (the ``plot`` extra) can be imported."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def concurrency_series(report: dict) -> tuple[str, list[int], list[float]]:
    """(label, concurrencies, output tokens/s) of a ``bench serve`` report with limited runs."""
    if report.get("benchmark") != "serve":
        raise ValueError(f"not a `bench serve` report: benchmark={report.get('benchmark')!r}")
    runs = sorted((r for r in report["runs"] if r["max_concurrency"]),
                  key=lambda r: r["max_concurrency"])
    if not runs:
        raise ValueError(f"report {report.get('label')!r} has no run with --max-concurrency")
    return (report["label"], [r["max_concurrency"] for r in runs],
            [r["output_token_throughput"] for r in runs])


def plot_throughput(report_files: list[str], output: str, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ticks: set[int] = set()
    for name in report_files:
        label, xs, ys = concurrency_series(json.loads(Path(name).read_text()))
        ax.plot(xs, ys, marker="o", label=label)
        ticks.update(xs)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("output tokens / s")
    ax.set_title(title or "Serving throughput against concurrency")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
