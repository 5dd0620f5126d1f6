"""The one exception type that scripts turn into a single line on stderr."""

import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user (data, config, paths, model ids): reported without a traceback."""


def exit_code(run: Callable[[], object]) -> int:
    """Run a command's body: 0 when it finishes, 2 with one ``error:`` line (no traceback) on bad input."""
    try:
        run()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
