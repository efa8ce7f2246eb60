"""Checkpoint conversion between the PyTorch reference and Flax/Orbax.

One mapping engine (`convert.mapping`) serves every model; each model contributes only its
key table (`convert.dit`, `convert.vae`, `convert.text_encoder`).
"""
