"""The search, without torch: triples and bounds, the samples journal, plans, the accuracy
predictor, the Lagrangian solver and Pareto fronts."""
