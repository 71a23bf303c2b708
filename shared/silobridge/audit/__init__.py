"""What crossed a boundary: tamper-evident audit logs, wire recording, the data-boundary check."""
