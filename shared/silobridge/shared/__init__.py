"""Code shared by every SiloBridge component: errors, spaces, vectors, PKI, transport, config."""
