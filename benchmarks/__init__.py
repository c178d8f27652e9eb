"""Evaluation harness: round trips, calibration-free speed figures, comparisons."""
