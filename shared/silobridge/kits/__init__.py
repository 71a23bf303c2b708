"""Startup kits: one directory per participant of a consortium (``silobridge kit``)."""
