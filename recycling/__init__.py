"""Embedding Recycling: train and serve the upper layers of an encoder from cached activations."""

__version__ = "0.1.0"
