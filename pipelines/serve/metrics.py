"""Prometheus metrics of the search service (text exposition format, no global registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Query latency buckets in seconds: the service answers in milliseconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """Counters and histograms of one service instance."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queries = Counter("tempstop_queries", "Search queries answered", registry=r)
        self.latency = Histogram(
            "tempstop_query_latency_seconds", "Time to answer a search query", buckets=LATENCY_BUCKETS, registry=r
        )
        self.videos = Gauge("tempstop_index_videos", "Videos in the index being served", registry=r)
        self.swaps = Gauge("tempstop_index_swaps", "Times a new index was swapped in since start", registry=r)
        self.cache = Gauge("tempstop_query_cache", "Query embedding cache", ["outcome"], registry=r)
        self.batches = Gauge("tempstop_text_batches", "Text-encoder batches run for queries", registry=r)
        self.model = Gauge("tempstop_model_info", "The model serving queries (value 1)",
                           ["source", "sha256", "version", "alias"], registry=r)  # fmt: skip

    def observe_query(self, seconds: float) -> None:
        """Count one answered query that took ``seconds``."""
        self.queries.inc()
        self.latency.observe(seconds)

    def render(self, holder, embedder) -> bytes:
        """The exposition text, with the gauges read from the current engine."""
        engine = holder.current
        self.videos.set(len(engine.search))
        self.swaps.set(holder.swaps)
        self.cache.labels("hit").set(embedder.hits)
        self.cache.labels("miss").set(embedder.misses)
        self.batches.set(embedder.batches)
        info = engine.model_info
        registry = info.get("registry") or {}
        self.model.clear()
        self.model.labels(info["source"], info["sha256"][:12], str(registry.get("version") or ""),
                          str(registry.get("alias") or "")).set(1)  # fmt: skip
        return generate_latest(self.registry)
