"""Fine-tuning a classifier with auxiliary outliers (Outlier Exposure, MixOE)."""
