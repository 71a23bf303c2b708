"""Prometheus metrics of a server: its registry and ``/metrics`` endpoint, and what is counted."""
