"""Shared vocabulary at the bottom of the package graph: node, router, control and chaos may import it; it imports none of them."""
