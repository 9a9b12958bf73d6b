"""Matryoshka sparse autoencoders: math, file formats, feature catalogue, steering."""
