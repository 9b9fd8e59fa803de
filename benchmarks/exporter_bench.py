"""Scrape cost with many series: the pre-rendered snapshot vs client_python formatting.

    python benchmarks/exporter_bench.py [--series 100000]

The sidecar renders each query's samples once, at the end of its cycle, and a scrape joins
the renderings (cached per snapshot version). The alternative is a custom collector whose
families client_python formats on every scrape. Both produce the same text; this prints
what each costs, side by side, for the five anomaly_* families of N series.
"""

from __future__ import annotations

import argparse
import gzip
import time

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from sidecar.exporter import Exporter
from sidecar.snapshot import FAMILIES, QueryView, SnapshotStore, label_text, published_labels, render_chunks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", type=int, default=100_000)
    args = p.parse_args()
    n = args.series
    labels = [
        {"job": "model-server", "namespace": f"ns{i % 20}", "pod": f"model-{i}", "instance": f"10.0.{i // 250}.{i % 250}:8000", "model": f"m{i % 50}"}
        for i in range(n)
    ]
    outputs = np.random.default_rng(0).random((len(FAMILIES), n))

    t0 = time.perf_counter()
    texts = [label_text(published_labels(lbl, "latency", "robust_zscore")) for lbl in labels]
    t_labels = time.perf_counter() - t0  # once per series lifetime (cached per buffer row)
    t0 = time.perf_counter()
    chunks = render_chunks(texts, outputs)
    t_render = time.perf_counter() - t0  # once per cycle, in the query's thread
    store = SnapshotStore([QueryView("latency", "x", "robust_zscore", 30.0, chunks=chunks)])
    exporter = Exporter(store, CollectorRegistry(), "127.0.0.1:0")
    t0 = time.perf_counter()
    body = exporter.scores_text()
    t_first = time.perf_counter() - t0  # first scrape after a cycle: join + encode
    t0 = time.perf_counter()
    for _ in range(10):
        exporter.scores_text()
    t_cached = (time.perf_counter() - t0) / 10  # every other scrape
    t0 = time.perf_counter()
    gz = gzip.compress(body, compresslevel=1)
    t_gzip = time.perf_counter() - t0

    class Collector:
        def collect(self):
            pub = [published_labels(lbl, "latency", "robust_zscore") for lbl in labels]
            keys = sorted(pub[0])
            for i, (name, doc) in enumerate(FAMILIES):
                g = GaugeMetricFamily(name, doc, labels=keys)
                for lbl, v in zip(pub, outputs[i].tolist()):
                    g.add_metric([lbl[k] for k in keys], v)
                yield g

    reg = CollectorRegistry()
    reg.register(Collector())
    t0 = time.perf_counter()
    ref = generate_latest(reg)
    t_client = time.perf_counter() - t0

    print(f"{n} series x {len(FAMILIES)} families = {n * len(FAMILIES)} samples, {len(body) / 2**20:.1f} MiB of text ({len(gz) / 2**20:.1f} MiB gzipped)")
    print(f"  label strings, once per series          {t_labels:8.3f} s")
    print(f"  render, once per cycle (query thread)   {t_render:8.3f} s")
    print(f"  first scrape after a cycle (join)       {t_first:8.3f} s")
    print(f"  any other scrape (cached)               {t_cached * 1000:8.3f} ms")
    print(f"  gzip level 1 (when the scraper asks)    {t_gzip:8.3f} s")
    print(f"  client_python collector, every scrape   {t_client:8.3f} s   ({t_client / (t_render + t_first):.1f}x the render+join, {t_client / max(t_cached, 1e-9):.0f}x a cached scrape)")
    assert len(ref) > 0.9 * len(body)


if __name__ == "__main__":
    main()
