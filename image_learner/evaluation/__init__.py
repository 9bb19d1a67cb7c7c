"""Evaluation stage: metrics with bootstrap intervals and the predictions table (pure; no Ludwig)."""
