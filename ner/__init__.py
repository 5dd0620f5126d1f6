"""Named-entity recognition: CoNLL-style data and entity/token metrics."""
