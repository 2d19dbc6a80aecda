"""The token language model (model), its sampling (sampling) and the depth head of the factorisation gap (depth)."""
