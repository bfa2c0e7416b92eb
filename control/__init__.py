"""The control plane: membership, health, ring epochs, drain and rebalance."""
