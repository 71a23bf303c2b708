"""A silo's data directory: docstore (SQLite), vector index (FAISS) and the two kept in step."""
