"""Extractive question answering (SQuAD format): reader, features and span decoding, metrics."""
