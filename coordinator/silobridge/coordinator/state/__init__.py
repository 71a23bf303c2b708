"""The coordinator's durable state: silo and adapter records and anchor embeddings in SQLite."""
