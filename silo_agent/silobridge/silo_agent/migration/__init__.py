"""Moving a serving silo to another embedding model (issue 10): the plan, so far."""
