"""Evaluation: seeded episodes, confidence intervals, Lake runs."""
