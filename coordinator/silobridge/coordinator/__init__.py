"""The coordinator: silo registry, anchor brokering, adapter training, federated search."""
