"""Tamper evidence: hashing, Merkle trees, the chain of signed heads, sealing, verification,
proofs, offline bundles and retention's pruning."""
