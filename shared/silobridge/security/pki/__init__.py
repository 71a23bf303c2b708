"""The consortium PKI: a private CA, CSRs approved by the CA, key and certificate files."""
