"""Runs: the run folder, trials, collection, the optimize loop, workers, saving models,
reports and progress. Imports every layer below."""
