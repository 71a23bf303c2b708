"""`silobridge eval`: retrieval quality of adapters against native and no-adapter baselines."""
