#!/usr/bin/env python3
"""Checks flakeport's metrics the way a Prometheus user meets them.

  prometheus_check.py PROMETHEUS_URL FLAKEPORT_METRICS_URL DASHBOARD ALERTS

A real Prometheus (started by the test) scrapes flakeport. This waits for
a successful scrape, then:
  - every metric the Grafana dashboard and the alert rules name is one
    flakeport exposes;
  - every query of the dashboard (with $instance as .*) runs without error
    in Prometheus;
  - every alert rule loaded and evaluated healthy;
  - what Prometheus stored for flakeport_blob_bytes_served_total is what
    /metrics says.
Exits non-zero naming the first thing wrong.
"""
import json
import re
import sys
import time
import urllib.parse
import urllib.request


def fail(msg):
    print(f"prometheus_check: {msg}", file=sys.stderr)
    sys.exit(1)


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def query(prom, expr):
    out = json.loads(get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    if out.get("status") != "success":
        fail(f"query failed: {expr}: {out}")
    return out["data"]["result"]


def main():
    prom, metrics_url, dashboard, alerts = sys.argv[1:5]
    exposed = get(metrics_url)
    families = set()
    for line in exposed.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            families.add(name)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            for s in suffixes.get(kind, []):
                families.add(name + s)
    exprs = [t["expr"] for p in json.load(open(dashboard))["panels"] for t in p["targets"]]
    rules_text = open(alerts).read()
    named = set(re.findall(r"flakeport_[a-z_]+", " ".join(exprs) + rules_text))
    missing = sorted(named - families)
    if missing:
        fail(f"named by the dashboard or alerts but not exposed: {missing}")
    # Two scrapes at least, so that rate() has something to work on.
    end = time.time() + 30
    while time.time() < end:
        up = query(prom, 'up{job="flakeport"}')
        samples = query(prom, 'count_over_time(up{job="flakeport"}[1m])')
        if up and up[0]["value"][1] == "1" and samples and int(samples[0]["value"][1]) >= 3:
            break
        time.sleep(0.5)
    else:
        targets = get(f"{prom}/api/v1/targets")
        fail(f"Prometheus did not scrape flakeport three times: {targets}")
    for e in exprs:
        query(prom, e.replace("$instance", ".*"))
    served = query(prom, 'flakeport_blob_bytes_served_total{compression="none"}')
    if not served:
        fail("Prometheus has no flakeport_blob_bytes_served_total")
    now = get(metrics_url)
    m = re.search(r'^flakeport_blob_bytes_served_total\{compression="none"\} (\d+)', now, re.M)
    if not m or served[0]["value"][1] != m.group(1):
        fail(f"Prometheus stored {served[0]['value'][1]}, /metrics says {m and m.group(1)}")
    end = time.time() + 30
    while True:
        groups = json.loads(get(f"{prom}/api/v1/rules"))["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("health") == "ok" for r in rules):
            break
        if time.time() > end:
            fail(f"alert rules not all healthy: {rules}")
        time.sleep(0.5)
    print(f"{len(exprs)} dashboard queries and {len(rules)} alert rules ran; {len(named)} metrics named")


if __name__ == "__main__":
    main()
