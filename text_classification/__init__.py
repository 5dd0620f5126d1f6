"""Text classification data: JSON lines with a text and a label per line."""
