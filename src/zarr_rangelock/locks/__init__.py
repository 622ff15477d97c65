"""Layer 1 and 4: range arithmetic, the per-key index, the lock table, OS locks (internal)."""
