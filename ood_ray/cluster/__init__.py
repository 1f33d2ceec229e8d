"""Clusters of normalised embeddings: spherical k-means (FAISS) or HDBSCAN, cluster outliers."""
