"""Molecular-dynamics drivers on JAX-MD integrators."""
