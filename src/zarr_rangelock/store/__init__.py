"""Layer 2 and 5: RangeLockedStore, its handles, the Memory/Local backends (internal)."""
