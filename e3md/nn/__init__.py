"""Equivariant neural-network layers (flax.linen), e3x-compatible."""
