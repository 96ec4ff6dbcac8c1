#!/usr/bin/env python3
"""Tables (curves.md) and, with --plot, PNG plots of a scripts/bench-curves
run, from its raw.tsv: curve, size, broker, the loadgen's summary line
(every figure a key=value, except conns' "N bytes per connection")."""
import re
import sys
from collections import OrderedDict

# Per curve: the table's title, its size column, and the figures shown.
CURVES = OrderedDict([
    ("conns", ("Idle connections: bytes each (broker RSS after - before, fresh process)",
               "connections", ["bytes-per-conn"])),
    ("room-size", ("One room of N members: one message at a time, until every member has it",
                   "members", ["to-all-p50", "to-all-p99", "each-p50", "each-p99", "missing"])),
    ("history", ("History requests (limit 50) against a room log of N messages",
                 "log", ["kept", "newest-p50", "newest-p99", "deep-p50", "deep-p99", "unanswered"])),
    ("retained", ("N retained messages: SUBSCRIBE `bench/{run}/#` until all arrived; exact filters",
                  "retained", ["wildcard-suback-p50", "wildcard-all-p50", "wildcard-all-max",
                               "exact-p50", "exact-p99", "missing"])),
    ("subscribe-rooms", ("N rooms: SUBSCRIBE of 1,000 filters by a persistent session, its reconnect",
                         "rooms", ["subscribe-p50", "subscribe-p99", "reconnect-p50", "reconnect-p99",
                                   "refused"])),
    ("startup", ("Start-up after SIGKILL with a filled store (messages:sessions)",
                 "store", ["store", "first-connack-p50", "first-connack-max", "resume-p50"])),
])
# What each plot shows (y, log-log against the size).
PLOTS = {
    "conns": ["bytes-per-conn"],
    "room-size": ["to-all-p50", "to-all-p99"],
    "history": ["newest-p99", "deep-p99"],
    "retained": ["wildcard-all-p50", "exact-p99"],
    "subscribe-rooms": ["subscribe-p50", "reconnect-p50"],
}


def figures(line):
    found = dict(re.findall(r"([A-Za-z][\w-]*)=(\S+)", line))
    m = re.search(r"([0-9.]+) bytes per connection", line)
    if m:
        found["bytes-per-conn"] = m.group(1)
    return found


def number(value):
    m = re.match(r"-?[0-9.]+", value or "")
    return float(m.group(0)) if m else None


def main():
    out = sys.argv[1]
    plot = "--plot" in sys.argv[2:]
    rows = OrderedDict()
    with open(f"{out}/raw.tsv") as f:
        for raw in f:
            parts = raw.rstrip("\n").split("\t", 3)
            if len(parts) == 4:
                rows.setdefault(parts[0], []).append(parts[1:])
    md = ["# Scale curves", "", f"From `{out}/raw.tsv` (`scripts/bench-curves`).", ""]
    for curve, (title, size_name, keys) in CURVES.items():
        if curve not in rows:
            continue
        md += [f"## {title}", "", "| " + " | ".join([size_name, "broker"] + keys) + " |",
               "| " + " | ".join(["---"] * (len(keys) + 2)) + " |"]
        for size, broker, line in rows[curve]:
            found = figures(line)
            if line.startswith(("FAILED", "skipped")):
                cells = [line[:60]] + [""] * (len(keys) - 1)
            else:
                cells = [found.get(k, "") for k in keys]
            md.append("| " + " | ".join([size, broker] + cells) + " |")
        md.append("")
    with open(f"{out}/curves.md", "w") as f:
        f.write("\n".join(md))
    if not plot:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for curve, keys in PLOTS.items():
        if curve not in rows:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = False
        for key in keys:
            series = OrderedDict()
            for size, broker, line in rows[curve]:
                x, y = number(size), number(figures(line).get(key))
                if x is not None and y is not None:
                    series.setdefault(broker, []).append((x, y))
            for broker, points in series.items():
                points.sort()
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                        label=f"{broker} {key}")
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(CURVES[curve][1])
        ax.set_ylabel("bytes" if curve == "conns" else "ms")
        ax.set_title(CURVES[curve][0], fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(f"{out}/{curve}.png", dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    main()
