"""Draws BENCHMARKS-latency.png from the latency points engine-bench writes.

    python3 bench/latency_chart.py benchmarks-latency.json BENCHMARKS-latency.png

One panel per guarantee: p50, p99 and p99.9 against the offered rate (each the median of
the windows held at that rate), the engine and Kafka Streams side by side, on log scales;
a bar on each p99 point spans its windows' lowest and highest p99. A percentile that
falls among outputs that never arrived is drawn as a cross at the top of the panel
("lost"). Needs matplotlib.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PERCENTILES = [("p50", ":"), ("p99", "-"), ("p999", "--")]
LABELS = {"p50": "p50", "p99": "p99", "p999": "p99.9"}
COLOURS = {"engine": "tab:blue", "Kafka Streams": "tab:orange"}


def main(data_path, png_path):
    with open(data_path) as f:
        points = json.load(f)
    guarantees = sorted({p["guarantee"] for p in points})
    fig, axes = plt.subplots(1, len(guarantees), figsize=(6.5 * len(guarantees), 4.8), squeeze=False)
    finite = [p[k] for p in points for k, _ in PERCENTILES if p[k] is not None]
    top = max(finite) * 3 if finite else 1000.0
    for ax, guarantee in zip(axes[0], guarantees):
        for tool, colour in COLOURS.items():
            mine = sorted(
                (p for p in points if p["tool"] == tool and p["guarantee"] == guarantee),
                key=lambda p: p["offered"],
            )
            if not mine:
                continue
            for key, style in PERCENTILES:
                xs = [p["offered"] for p in mine]
                ys = [p[key] if p[key] is not None else top for p in mine]
                ax.plot(xs, ys, style, color=colour, marker="o", markersize=3,
                        label=f"{tool} {LABELS[key]}")
                lost = [(x, top) for x, p in zip(xs, mine) if p[key] is None]
                if lost:
                    ax.plot(*zip(*lost), "x", color=colour, markersize=9)
            # The spread of p99 over the windows (lost windows, null in the data, drawn
            # up to the top of the panel).
            for p in mine:
                windows = [w if w is not None else top for w in p.get("p99_windows", [])]
                if len(windows) > 1 and p["p99"] is not None:
                    ax.vlines(p["offered"], min(windows), max(windows), color=colour,
                              linewidth=1, alpha=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (records/s)")
        ax.set_ylabel("end-to-end latency (ms)")
        ax.set_title(f"ticket-pipeline, {guarantee} (x: outputs lost)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
