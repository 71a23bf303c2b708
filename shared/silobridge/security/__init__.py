"""Who may do what: identities, rules, gatekeeper, denylist, rate limits, signed queries, PKI."""
