"""The edge node: a supervisor and its worker processes (one shard each)."""
