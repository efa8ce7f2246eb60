"""agibot-jax: JAX/Flax post-training of the Cosmos-Transfer2.5 Agibot 3-view control DiT."""
