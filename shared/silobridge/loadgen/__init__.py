"""``silobridge bench live``: a load generator for a running consortium (sizing a deployment)."""
