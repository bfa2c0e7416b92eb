"""Proof by force: local clusters, the load generator and failover drills."""
