"""The silo agent: one organization's embedder, docstore, index, ingest and SiloService."""
