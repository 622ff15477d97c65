"""Layer 3: the shard write pipeline, its per-shard jobs, shard layout arithmetic (internal)."""
