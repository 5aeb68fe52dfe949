#!/usr/bin/env python3
"""Checks the Grafana dashboard against a live Prometheus that scrapes the mesh.

    observability/check-dashboard.py --prometheus http://127.0.0.1:9090

Every PromQL expression of the dashboard (panel targets and query variables) must
  - be accepted by that Prometheus (so it parses in the oldest version we run, 2.42), and
  - reference only metric names the mesh exports: names scraped from the jobs
    `mesh-registry` and `mesh-sidecars`, taken from Prometheus itself, not from a list here.
Run it after traffic has flowed (compose.test.sh does), so counters that only appear once
something happened (retries) exist. Standard library only.
"""

import argparse
import json
import pathlib
import re
import sys
import urllib.parse
import urllib.request

DEFAULT_DASHBOARD = pathlib.Path(__file__).parent / "grafana" / "dashboards" / "mesh.json"
JOBS = 'job=~"mesh-registry|mesh-sidecars"'

# Words that may stand where a metric name would, but are not one.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "atan2"}
# Grafana's macros, replaced by something Prometheus accepts.
MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "15m"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def expressions(dashboard):
    """(where, PromQL) for every query in the dashboard, rows' nested panels included."""
    found = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        # label_values(selector, label) is Grafana's; the selector inside is PromQL.
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query or "")
        found.append((f"variable ${var['name']}", match.group(1) if match else query))
    return found


def substitute(expr, variables):
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    for name in variables:
        expr = expr.replace("${" + name + "}", ".*").replace("$" + name, ".*")
    return expr


def metric_names(expr):
    """The metric names an expression selects, found by removing everything else."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', " ", expr)  # strings
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"(?<![\w:])\d+(ms|s|m|h|d|w|y)\b", " ", s)  # durations (offset 5m)
    s = re.sub(r"(?<![\w:])(0x[0-9a-fA-F]+|\d*\.?\d+(e[+-]?\d+)?)", " ", s)  # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group().lower() not in KEYWORDS:
            names.add(m.group())
    return names


def get(prometheus, path, **params):
    url = f"{prometheus}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:  # Prometheus explains a bad query in the body
        return json.load(error)


def exported_names(prometheus):
    """Metric names the mesh's jobs export: series present, plus families announced in the
    scraped text (with a histogram's series suffixes)."""
    names = set(get(prometheus, "/api/v1/label/__name__/values", **{"match[]": "{" + JOBS + "}"})["data"])
    for family, metadata in get(prometheus, "/api/v1/metadata")["data"].items():
        if family.startswith("mesh_"):
            names.add(family)
            if any(m.get("type") in ("histogram", "summary") for m in metadata):
                names.update(family + suffix for suffix in HISTOGRAM_SUFFIXES)
    # Prometheus' own per-target series are not exported by the mesh.
    return {n for n in names if n.startswith("mesh_")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--dashboard", default=DEFAULT_DASHBOARD, type=pathlib.Path)
    args = parser.parse_args()
    prometheus = args.prometheus.rstrip("/")

    dashboard = json.loads(args.dashboard.read_text())
    variables = [v["name"] for v in dashboard.get("templating", {}).get("list", [])]
    exported = exported_names(prometheus)
    if not exported:
        sys.exit(f"{prometheus} has no mesh_* metrics from {JOBS}: is it scraping the mesh?")
    print(f"{len(exported)} metric names exported by the registry and the sidecars")

    problems = []
    queries = expressions(dashboard)
    for where, expr in queries:
        promql = substitute(expr, variables)
        names = metric_names(promql)
        if not names:
            problems.append(f"{where}: no metric name found in {expr!r}")
        for name in sorted(names - exported):
            problems.append(f"{where}: {name} is not exported by the registry or the sidecars")
        answer = get(prometheus, "/api/v1/query", query=promql)
        if answer.get("status") != "success":
            problems.append(f"{where}: Prometheus refused {promql!r}: {answer.get('error')}")
        else:
            series = len(answer["data"]["result"])
            print(f"  ok  {where}: {', '.join(sorted(names))} ({series} series now)")
    for problem in problems:
        print(f"  FAIL {problem}")
    if problems:
        sys.exit(f"{len(problems)} problem(s) in {args.dashboard}")
    print(f"all {len(queries)} dashboard queries parse and use exported metrics only")


if __name__ == "__main__":
    main()
