"""2-D maps of normalised embeddings: PCA, UMAP, t-SNE."""
