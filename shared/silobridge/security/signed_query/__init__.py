"""Client-signed queries: the client signs what it asks, each silo verifies it and refuses replays.

A client signs ``QueryClaims`` (hash of the query vector, source space, target silos, k, time,
nonce) with the key of its consortium certificate. The coordinator forwards the claims, the
signature and the certificate untouched; the silo checks them against the consortium CA, so a
coordinator can neither forge a query for an organization nor replay one it has seen.

``claims`` (the signed message and its encoding), ``signing`` (the client side), ``verify``
(both servers) and ``replay`` (the silo's nonce memory).
"""
