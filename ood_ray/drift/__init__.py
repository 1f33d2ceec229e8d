"""Drift between a reference and new data: two-sample tests, corrections, new-class detection."""
