#!/usr/bin/python3
"""Parses Prometheus text exposition (file argument, or stdin) with the
reference client's parser and prints its reading as JSON, so that C++ tests
check wq's /metrics against a real parser:

  {"families": [{"name": ..., "type": ..., "documentation": ...,
                 "samples": [{"name": ..., "labels": {...}, "value": ...}]}]}

Exits 1 with the parser's error when the text does not parse.
"""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def value_of(value):
    # JSON has no infinities or NaN; spell them as Prometheus does.
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value


def main():
    text = open(sys.argv[1]).read() if len(sys.argv) > 1 else sys.stdin.read()
    try:
        families = [
            {
                "name": family.name,
                "type": family.type,
                "documentation": family.documentation,
                "samples": [
                    {"name": s.name, "labels": s.labels, "value": value_of(s.value)}
                    for s in family.samples
                ],
            }
            for family in text_string_to_metric_families(text)
        ]
    except Exception as error:  # the parser raises ValueError and others
        print(f"prometheus_client could not parse: {error!r}", file=sys.stderr)
        return 1
    json.dump({"families": families}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
