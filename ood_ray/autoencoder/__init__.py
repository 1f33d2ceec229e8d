"""A small convolutional autoencoder trained on the reference images; ``score_recon``."""
