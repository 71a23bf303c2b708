"""Federated search: planning routes, translation, fan-out outcomes, calibration and merging."""
