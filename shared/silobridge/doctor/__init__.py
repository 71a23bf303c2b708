"""``silobridge doctor`` and ``silobridge health``: preflight checks and a server's own health."""
