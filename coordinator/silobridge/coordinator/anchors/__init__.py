"""Public anchor sets: the versioned catalogue, anchor files, synthetic anchors, the CLI."""
