"""Sharded FAISS search on Ray: planning, shard actors, the exact top-k merge, the kNN pass."""
