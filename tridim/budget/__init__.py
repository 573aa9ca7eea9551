"""Budgets in a triple's terms: the cost model C(d, w, r) the solver budgets with, and
latency budgets realised by measuring. Imports prune and below."""
