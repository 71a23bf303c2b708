"""Embedding models behind spec strings (used by silos and by evaluation)."""
