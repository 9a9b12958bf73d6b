"""MAIRA-2 assembled from transformers parts: checkpoint loading, processor, output parsing."""
