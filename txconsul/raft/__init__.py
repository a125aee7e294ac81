"""Consensus: the single-node log of a lone server (and, later, Raft)."""
