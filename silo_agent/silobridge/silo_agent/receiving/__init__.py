"""Receiving-side steps: what a silo does with translated queries, using only what it holds."""
