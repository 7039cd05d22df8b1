#!/usr/bin/env python3
"""Turn bench/scale.sh's raw numbers into its Markdown table.

    scale_report.py SCALE_CSV META_TSV > scale.md

One row per command and tool: time and peak RSS at every size, the growth
factor per doubling of the file count between the two largest sizes
(time_ratio ** (1 / log2(size_ratio)): 2.0 is linear, 4.0 quadratic), and
at the largest size cairn's time and memory over restic's. A command that
did not finish shows its status (oom, exit-N). Standard library only.
"""
import csv
import math
import sys

STEPS = [
    ("backup", "backup"),
    ("backup_nochange", "no-change backup"),
    ("ls", "ls"),
    ("stats", "stats <snapshot>"),
    ("check", "check"),
    ("check_read_data", "check --read-data"),
    ("verify", "verify (cairn)"),
    ("restore", "restore"),
    ("restore_nofsync", "restore --no-fsync (cairn)"),
    ("restore_path", "restore one directory"),
    ("replicate", "replicate / restic copy"),
]
MiB = 1024  # max_rss_kib per MiB


def growth(a, b, na, nb):
    if a <= 0 or b <= 0 or nb <= na:
        return None
    return (b / a) ** (1 / math.log2(nb / na))


def main():
    rows = list(csv.DictReader(open(sys.argv[1], newline="")))
    meta = dict(line.rstrip("\n").split("\t", 1) for line in open(sys.argv[2]) if "\t" in line)
    sizes = sorted({int(r["files"]) for r in rows})
    tools = [t for t in ("cairn", "restic") if any(r["tool"] == t for r in rows)]
    by = {(r["tool"], int(r["files"]), r["step"]): r for r in rows}
    out = ["# Scaling benchmark", ""]
    for k in ("date", "command", "machine", "tree", "limit", "version_cairn", "version_restic"):
        if k in meta:
            out.append(f"- {k.replace('_', ' ')}: `{meta[k]}`" if k == "command" else f"- {k.replace('_', ' ')}: {meta[k]}")
    out.append("")

    def cell(r, what):
        if r is None:
            return "–"
        if r["status"] != "ok":
            return r["status"]
        return f"{float(r['wall_s']):.2f} s" if what == "time" else f"{int(r['max_rss_kib']) / MiB:.0f} MiB"

    for what, title in (("time", "Wall time"), ("rss", "Peak RSS")):
        head = ["command", "tool"] + [f"{n:,} files" for n in sizes] + ["growth per doubling"]
        if len(tools) == 2:
            head.append(f"cairn / restic at {sizes[-1]:,}")
        out += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for step, label in STEPS:
            for t in tools:
                cells = [by.get((t, n, step)) for n in sizes]
                if all(c is None for c in cells):
                    continue
                line = [label, t] + [cell(c, what) for c in cells]
                g = None
                if len(sizes) >= 2:
                    a, b = by.get((t, sizes[-2], step)), by.get((t, sizes[-1], step))
                    if a and b and a["status"] == b["status"] == "ok":
                        key = "wall_s" if what == "time" else "max_rss_kib"
                        g = growth(float(a[key]), float(b[key]), sizes[-2], sizes[-1])
                line.append(f"{g:.2f}×" if g else "–")
                if len(tools) == 2:
                    ratio = "–"
                    # restic has one restore (unsynced): both of cairn's compare with it.
                    other = "restore" if step == "restore_nofsync" else step
                    c, r = by.get(("cairn", sizes[-1], step)), by.get(("restic", sizes[-1], other))
                    if t == "cairn" and c and r and c["status"] == r["status"] == "ok":
                        key = "wall_s" if what == "time" else "max_rss_kib"
                        if float(r[key]) > 0:
                            ratio = f"{float(c[key]) / float(r[key]):.2f}"
                    line.append(ratio)
                out.append("| " + " | ".join(line) + " |")
        out.append("")
    bad = [r for r in rows if r["status"] not in ("ok",)]
    if bad:
        out.append("Not ok: " + ", ".join(f"{r['tool']} {r['step']} at {int(r['files']):,} ({r['status']})" for r in bad))
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
