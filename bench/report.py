#!/usr/bin/env python3
"""Turn bench/volume.sh's raw numbers into the Markdown results table.

    report.py RESULTS_CSV META_TSV > results.md

RESULTS_CSV has one row per timed command (see COLUMNS); META_TSV holds
"key<TAB>value" lines describing the machine, the tools and the run. Medians
are taken over rounds (throughput = data size / median time, so its ratio is
the time ratio); the range (min-max) is shown next to each time so noise is
visible. Can be re-run on an old results.csv. Standard library only.
"""
import csv
import statistics
import sys

COLUMNS = ["tool", "round", "position", "step", "wall_s", "user_s", "sys_s", "max_rss_kib", "src_bytes",
           "repo_bytes"]
STEPS = [
    ("backup_full", "full backup"),
    ("backup_nochange", "no-change re-backup"),
    ("backup_mutated", "backup after mutation"),
    ("restore", "restore latest"),
    ("restore_nofsync", "restore latest, --no-fsync (cairn only)"),
]
MiB = 1 << 20


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("wall_s", "user_s", "sys_s"):
            r[k] = float(r[k])
        for k in ("round", "position", "max_rss_kib", "src_bytes", "repo_bytes"):
            r[k] = int(r[k])
    return rows


def load_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            if k:
                meta[k] = v
    return meta


def values(rows, tool, step, fn):
    return [fn(r) for r in rows if r["tool"] == tool and r["step"] == step]


def fmt_num(x):
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cell(vals, show_range):
    if not vals:
        return "–"
    m = statistics.median(vals)
    if show_range and len(vals) > 1:
        return f"{fmt_num(m)} ({fmt_num(min(vals))}–{fmt_num(max(vals))})"
    return fmt_num(m)


def ratio(a_vals, b_vals, invert):
    """median(a)/median(b), or median(b)/median(a) when invert."""
    if not a_vals or not b_vals:
        return "–"
    a, b = statistics.median(a_vals), statistics.median(b_vals)
    num, den = (b, a) if invert else (a, b)
    if den == 0:
        return "–"
    return f"{num / den:.2f}"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    rows = load(sys.argv[1])
    meta = load_meta(sys.argv[2])
    order = meta.get("tools", "").split() or sorted({r["tool"] for r in rows})
    tools = [t for t in order if any(r["tool"] == t for r in rows)]
    base = "cairn" if "cairn" in tools else None
    others = [t for t in tools if t != base] if base else []

    # metric rows: (label, step, value function, show range, ratio kind)
    #   ratio kind "speed": other/cairn time  (> 1: cairn faster / cheaper)
    #   ratio kind "size":  cairn/other value (< 1: cairn smaller / leaner)
    metrics = []
    for step, label in STEPS:
        metrics.append((f"{label}: time (s)", step, lambda r: r["wall_s"], True, "speed"))
        if step != "backup_nochange":
            metrics.append((f"{label}: throughput (MiB/s)", step, None, False, "thr"))
        metrics.append((f"{label}: CPU user+sys (s)", step, lambda r: r["user_s"] + r["sys_s"], False, "speed"))
        metrics.append((f"{label}: peak RSS (MiB)", step, lambda r: r["max_rss_kib"] / 1024, False, "size"))
    metrics.append(("repository size after full backup (MiB)", "backup_full", lambda r: r["repo_bytes"] / MiB,
                    False, "size"))
    metrics.append(("repository size after all 3 backups (MiB)", "backup_mutated",
                    lambda r: r["repo_bytes"] / MiB, False, "size"))

    out = []
    w = out.append
    w("# cairn volume benchmark")
    w("")
    w(f"- date: {meta.get('date', '?')}")
    w(f"- command: `{meta.get('command', '?')}`")
    w(f"- machine: {meta.get('nproc', '?')} CPUs, {meta.get('cpu', '?')}, {meta.get('mem', '?')} RAM, "
      f"kernel {meta.get('kernel', '?')}, {meta.get('os', '?')}")
    w(f"- storage: {meta.get('bench_dir', '?')} on {meta.get('fstype', '?')}")
    w(f"- data: {meta.get('tree', '?')}")
    w(f"- rounds: {meta.get('rounds', '?')}; order within round r is rotated by r-1 "
      f"({meta.get('tools', '?')})")
    for t in tools:
        w(f"- {t}: {meta.get('version_' + t, '?')}")
    if meta.get("source"):
        w(f"- source: {meta['source']}")
    w("")
    head = ["metric"] + tools + [f"cairn/{o}" for o in others]
    w("| " + " | ".join(head) + " |")
    w("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for label, step, fn, show_range, kind in metrics:
        if kind == "thr":
            # throughput of the median time, so its ratio is exactly the time ratio
            vals = {}
            for t in tools:
                walls = values(rows, t, step, lambda r: r["wall_s"])
                srcs = values(rows, t, step, lambda r: r["src_bytes"])
                vals[t] = [statistics.median(srcs) / MiB / statistics.median(walls)] if walls else []
        else:
            vals = {t: values(rows, t, step, fn) for t in tools}
        line = [label] + [cell(vals[t], show_range) for t in tools]
        for o in others:
            # speed: other time / cairn time; thr: cairn thr / other thr (same number); size: cairn / other
            line.append(ratio(vals[base], vals[o], invert=(kind == "speed")))
        w("| " + " | ".join(line) + " |")
    w("")
    w("Medians over rounds; times show (min–max); throughput = data size ÷ median time. Ratios: for times, throughput and CPU, "
      "cairn/X = X's time ÷ cairn's time (> 1: cairn is faster or uses less CPU); "
      "for peak RSS and repository size, cairn/X = cairn's value ÷ X's (< 1: cairn uses less).")
    w("")
    w("Notes: everything runs warm (the tree is in the page cache; caches are not dropped). "
      "Each command's time includes opening the repository (password key derivation). "
      "Every round starts from an empty repository and an empty tool cache "
      "(restic: RESTIC_CACHE_DIR, borg: BORG_BASE_DIR, every tool: XDG_CACHE_HOME, all under the bench directory), "
      "so the full backup is a first backup; the cache is kept between the steps of a round, as in normal use. "
      "Restore verification: the restored tree must equal the mutated tree file for file and byte for byte.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
