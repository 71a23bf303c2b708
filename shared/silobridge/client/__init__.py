"""A consortium member's client: ``client.toml`` (``config``), the async SDK (``api``), the CLI."""
