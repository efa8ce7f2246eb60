"""Cosmos-Reason1 (Qwen2.5-VL-7B LM) caption embeddings: model (qwen), tokenisation (tokenize),
FULL_CONCAT + online embedder (embed), per-caption cache (cache, precompute) and the run's
embedding source (provider)."""
