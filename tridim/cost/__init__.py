"""What a model costs: MACs (one formula), the one latency timer, runtimes and per-layer
latency tables. Imports training, search."""
