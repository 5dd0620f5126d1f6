"""Speed benchmark suite: ``python -m benchmarks --suite cpu|gpu|smoke`` (see ``__main__``)."""
