"""The search service (`tempstop serve`): a FastAPI app over a collection index, its web page,
Prometheus metrics, and the hot swap of a new index. See :mod:`.app`."""
