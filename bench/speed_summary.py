#!/usr/bin/env python3
"""Summarizes bench/speed_rounds' output directory: for every row of
bench/speed and every llama.cpp format, min-median-max over the rounds of
each metric; then ours over llama.cpp per round (each round's wq run against
the llama.cpp run just before it), min-median-max; then each float compute
dtype's decode b1 over int8 compute's of the same artifact.

    speed_summary.py OUT_DIR
"""
import json
import statistics
import sys
from pathlib import Path

METRICS = ["pp128", "pp512", "decode_b1", "decode_b4", "decode_b16"]


def ours(row, metric):
    if metric.startswith("pp"):
        return row["prefill_tok_s"].get(metric[2:])
    return row["decode_tok_s"].get(metric.split("_b")[1])


def row_key(row):
    return (row["model"], row["weights"], row["lm_head"], row["compute"], row["kv_cache"])


def without_compute(key):
    return key[:3] + key[4:]


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    lo, mid, hi = min(values), statistics.median(values), max(values)
    digits = 2 if hi < 10 else 1
    if len(values) == 1 or lo == hi:
        return f"{mid:.{digits}f}"
    return f"{lo:.{digits}f}-**{mid:.{digits}f}**-{hi:.{digits}f}"


def main(out_dir):
    out_dir = Path(out_dir)
    rounds = sorted(out_dir.glob("speed_round*.json"), key=lambda p: int(p.stem[11:]))
    if not rounds:
        sys.exit(f"speed_summary.py: no speed_round*.json in {out_dir}")
    ours_by_row, theirs_by_format, ratios, float_over_int8 = {}, {}, {}, {}
    for path in rounds:
        n = path.stem[11:]
        speed = json.loads(path.read_text())
        ref = json.loads((out_dir / f"llamacpp_round{n}.json").read_text())
        for shape, formats in ref["models"].items():
            for fmt, metrics in formats.items():
                for m in METRICS:
                    theirs_by_format.setdefault((shape, fmt), {}).setdefault(m, []).append(metrics.get(m))
        int8 = {}
        for row in speed["rows"]:
            key = row_key(row)
            for m in METRICS:
                ours_by_row.setdefault(key, {}).setdefault(m, []).append(ours(row, m))
                theirs = ref["models"].get(row["model"], {}).get(row["llama_cpp_format"], {}).get(m)
                mine = ours(row, m)
                if theirs and mine:
                    ratios.setdefault(key + (row["llama_cpp_format"],), {}).setdefault(m, []).append(mine / theirs)
            if row["compute"] == "int8":
                int8[without_compute(key)] = ours(row, "decode_b1")
        for row in speed["rows"]:
            key = row_key(row)
            base = int8.get(without_compute(key))
            if row["compute"] != "int8" and base and ours(row, "decode_b1"):
                float_over_int8.setdefault(key, []).append(ours(row, "decode_b1") / base)

    header = "| model | weights | lm_head | compute | KV | " + " | ".join(METRICS) + " |"
    rule = "|---" * (5 + len(METRICS)) + "|"
    print(f"{len(rounds)} rounds, tok/s min-**median**-max\n")
    print(header)
    print(rule)
    for key, metrics in ours_by_row.items():
        print("| " + " | ".join(key) + " | " + " | ".join(spread(metrics[m]) for m in METRICS) + " |")
    for (shape, fmt), metrics in theirs_by_format.items():
        print(f"| {shape} | llama.cpp {fmt} | | | | " + " | ".join(spread(metrics[m]) for m in METRICS) + " |")
    print("\nOurs over llama.cpp (per round, the wq run over the llama.cpp run before it)\n")
    print(header.replace(" KV |", " KV | llama.cpp |"))
    print(rule + "---|")
    for key, metrics in ratios.items():
        print("| " + " | ".join(key) + " | " + " | ".join(spread(metrics.get(m, [])) for m in METRICS) + " |")
    if float_over_int8:
        print("\nDecode b1 with float compute over int8 compute, same weights (per round)\n")
        print("| model | weights | lm_head | compute | KV | b1 / int8 b1 |")
        print("|---|---|---|---|---|---|")
        for key, values in float_over_int8.items():
            print("| " + " | ".join(key) + f" | {spread(values)} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
