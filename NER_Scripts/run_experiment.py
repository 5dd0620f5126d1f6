"""Run one NER experiment file: every requested mode for every seed.

    python NER_Scripts/run_experiment.py HyperparameterSelection/ner/minilm_l6_bc5cdr.yaml --data-dir DATA

Builds (or reuses) the cache of the frozen lower layers, trains each mode, evaluates on dev and test
(entity F1 and token F1), and writes ``results/ner/<dataset>/<experiment>.json`` plus the summary.
"""

from __future__ import annotations

import sys

from recycling import runner


def parse_args(argv=None):
    return runner.parse_args(__doc__, argv)


def main(argv=None) -> int:
    return runner.main("ner", parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
