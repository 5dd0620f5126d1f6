"""Run one extractive-QA experiment file: every requested mode for every seed.

    python QA_Scripts/run_experiment.py HyperparameterSelection/qa/minilm_l6_squad.yaml --data-dir DATA

Builds (or reuses) the cache of the frozen lower layers (one row per window token), trains each
mode with model selection on a held-out slice of train's articles (or the dataset's dev file),
evaluates exact match and F1 on the test file (SQuAD: the official dev set), and writes
``results/qa/<dataset>/<experiment>.json`` plus the summary.
"""

from __future__ import annotations

import sys

from recycling import runner


def parse_args(argv=None):
    return runner.parse_args(__doc__, argv)


def main(argv=None) -> int:
    return runner.main("qa", parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
