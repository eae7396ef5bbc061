#!/usr/bin/env python3
"""Draws W10's backlog over time: one line per system, the held snapshots shaded.

    plot_w10.py SERIES.csv OUT.png TITLE

SERIES.csv is what the bench writes (second,system,sent,consumed_per_second,backlog,holding).
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"pgflow": "#1f77b4", "pgmq": "#d62728", "PgQ": "#2ca02c"}


def main(src, out, title):
    series, holds = {}, set()
    with open(src) as f:
        for r in csv.DictReader(f):
            s = int(r["second"])
            series.setdefault(r["system"], []).append((s, int(r["backlog"])))
            if r["holding"] == "1":
                holds.add(s)
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    for s in sorted(holds):
        ax.axvspan(s, s + 1, color="#f0e0a0", linewidth=0)
    for name, points in series.items():
        xs = [p[0] + 1 for p in points]
        ys = [max(p[1], 0) for p in points]
        ax.plot(xs, ys, label=name, color=COLORS.get(name), linewidth=1.4)
    ax.set_yscale("symlog", linthresh=100)
    ax.set_xlabel("seconds (shaded: a REPEATABLE READ transaction holds the snapshot)")
    ax.set_ylabel("backlog (messages sent, not yet consumed)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
