"""Placement: the hash ring over live shards, the route service and the client SDK."""
