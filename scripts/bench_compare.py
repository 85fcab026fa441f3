#!/usr/bin/env python3
"""Rows of three scripts/bench tables side by side: BEFORE-1 BEFORE-2 AFTER.

For each row: flakeport's figure in each run, and the ratio to the
registry where the row has one. A row's score is its ratio (from its notes, else of the two columns,
as time) or, for a row with no registry figure, flakeport's time in
seconds; lower is better. The two BEFORE runs are the same binary,
so how far apart they are is the run-to-run noise; a row is marked when
AFTER's ratio is worse than both BEFORE runs by more than that noise
(and by more than 5%, as rows of a few milliseconds move by more).
"""
import re
import sys


def first_figure(text):
    """(value, unit) of a column's first figure: '38 ms 3331 MiB/s' -> (38, 'ms')."""
    m = re.match(r"(\d+(?:\.\d+)?) ?(ms|s|MiB/s|req/s)\b", text)
    return (float(m.group(1)), m.group(2)) if m else None


def score(flakeport, registry, notes):
    """Lower is better: the row's ratio to the registry, else flakeport's
    own time (a row the registry has no figure for)."""
    m = re.search(r"ratio (\d+(?:\.\d+)?)", notes)
    if m:
        return float(m.group(1))
    f, r = first_figure(flakeport), first_figure(registry)
    if notes.startswith("columns:"):  # two flakeport columns (Nix versions): the first's time
        r = None
    if f and r and f[1] == r[1] and f[0] > 0 and r[0] > 0:
        return f[0] / r[0] if f[1] in ("ms", "s") else r[0] / f[0]
    if f and f[1] in ("ms", "s"):
        return f[0] * (1000 if f[1] == "s" else 1) / 1000  # seconds
    return None


def rows(path):
    """Row name -> (flakeport column, score). Names and notes may hold
    " | " themselves: the two figure columns are the first pair of cells
    that look like figures."""
    figure = re.compile(r"^(\d+(\.\d+)? ?(ms|s|MiB/s|req/s)\b|-$)")
    out = {}
    parent = ""
    for line in open(path):
        # An indented row ("  same, Range...") belongs to the row above it.
        sub = line.startswith("  ")
        parts = [p.strip() for p in line.rstrip("\n").split(" | ")]
        at = next(
            (i for i in range(1, len(parts) - 1) if figure.match(parts[i]) and figure.match(parts[i + 1])),
            None,
        )
        if at is None or parts[0] == "benchmark" or set(parts[0]) <= {"-"}:
            continue
        name = " | ".join(parts[:at])
        if sub:
            name = f"{parent[:24]}: {name}"
        else:
            parent = name
        flakeport, registry, notes = parts[at], parts[at + 1], " | ".join(parts[at + 2 :])
        out[name] = (flakeport, score(flakeport, registry, notes))
    return out


def main():
    before1, before2, after = (rows(p) for p in sys.argv[1:4])
    w = 52
    print(f"{'row':<{w}} | {'before (1)':>22} | {'before (2)':>22} | {'after':>22} | verdict")
    print("-" * w + " | " + " | ".join(["-" * 22] * 3) + " | -------")
    worse = 0
    for name in after:
        cols = []
        for run in (before1, before2, after):
            fig, ratio = run.get(name, ("-", None))
            first = first_figure(fig)
            fig = f"{first[0]:g} {first[1]}" if first else fig
            cols.append(fig + (f" ({ratio:.2f})" if ratio is not None else ""))
        verdict = ""
        r1, r2, ra = (run.get(name, (None, None))[1] for run in (before1, before2, after))
        if None not in (r1, r2, ra):
            noise = abs(r1 - r2)
            best_before = min(r1, r2)
            if ra > max(r1, r2) + max(noise, 0.05 * best_before):
                verdict = f"worse by {ra - max(r1, r2):.2f} (noise {noise:.2f})"
                worse += 1
            else:
                verdict = f"within noise {noise:.2f}"
        print(f"{name[:w]:<{w}} | {cols[0][:22]:>22} | {cols[1][:22]:>22} | {cols[2][:22]:>22} | {verdict}")
    print(f"\n{worse} row(s) worse than the noise; in brackets each row's score, lower is better")


main()
