"""Convert TriviaQA (rc) into the SQuAD v1.1 files the QA experiments read.

    python QA_Scripts/prepare_triviaqa.py --out DATA/qa/triviaqa
    python QA_Scripts/prepare_triviaqa.py --out DATA/qa/triviaqa --from-json-dir DIR

Without ``--from-json-dir`` the records come from Hugging Face (``datasets.load_dataset("trivia_qa",
"rc")``), which needs network access. ``--from-json-dir`` reads ``train.jsonl`` and
``validation.jsonl`` instead (one record per line, in the Hugging Face layout), so the conversion
also runs offline and never imports ``datasets``. Writes ``train.json``, ``dev.json`` and
``test.json`` (rules in ``qa/triviaqa.py``) and prints the output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from qa.triviaqa import SOURCE_SPLITS, prepare
from recycling.errors import UserError, exit_code

logger = logging.getLogger("prepare_triviaqa")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python QA_Scripts/prepare_triviaqa.py",
                                description="Convert TriviaQA (rc) into SQuAD v1.1 train/dev/test files.")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder, usually <data_dir>/qa/triviaqa")
    p.add_argument("--from-json-dir", type=Path, metavar="DIR",
                   help="read DIR/train.jsonl and DIR/validation.jsonl instead of downloading")
    p.add_argument("--max-context-chars", type=int, metavar="N",
                   help="cut every context to its first N characters (default: no cap)")
    p.add_argument("--seed", type=int, default=0, help="seed of the 85/15 train/dev split (default 0)")
    return p.parse_args(argv)


def read_jsonl(path: Path) -> Iterator[dict]:
    """Records one by one, so a large file is never held twice in memory."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{number}: expected a JSON object per line")
            yield record


def local_records(folder: Path) -> dict[str, Iterator[dict]]:
    """Check every file exists before any work starts, then read them lazily."""
    paths = {split: folder / f"{split}.jsonl" for split in SOURCE_SPLITS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"missing TriviaQA record file(s): {', '.join(missing)}")
    return {split: read_jsonl(path) for split, path in paths.items()}


def hub_records() -> Mapping[str, Any]:
    """TriviaQA rc from the Hugging Face hub; any failure becomes one error line, since the usual
    cause (no network, or no ``datasets`` package) is not something a traceback helps with."""
    try:
        import datasets  # only here: the offline route must work without the package

        loaded = datasets.load_dataset("trivia_qa", "rc")
    except Exception as err:  # noqa: BLE001 - ImportError, connection and hub errors alike
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError("could not load the Hugging Face dataset trivia_qa (rc): it needs network "
                        f"access and the `datasets` package; offline, use --from-json-dir ({reason})") from None
    return {split: loaded[split] for split in SOURCE_SPLITS}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    def convert():
        records = local_records(args.from_json_dir) if args.from_json_dir else hub_records()
        prepare(records, args.out, max_context_chars=args.max_context_chars, seed=args.seed)
        print(args.out)

    return exit_code(convert)


if __name__ == "__main__":
    sys.exit(main())
