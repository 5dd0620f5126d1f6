"""Run one text-classification experiment file: every requested mode for every seed.

    python TextClassificationScripts/run_experiment.py HyperparameterSelection/text_classification/minilm_l6_chemprot.yaml --data-dir DATA

Builds (or reuses) the cache of the frozen lower layers, trains each mode, evaluates on dev and
test, and writes ``results/text_classification/<dataset>/<experiment>.json`` plus the summary.
"""

from __future__ import annotations

import sys

from recycling import runner


def parse_args(argv=None):
    return runner.parse_args(__doc__, argv)


def main(argv=None) -> int:
    return runner.main("text_classification", parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
