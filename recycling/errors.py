"""The one exception type that scripts turn into a single line on stderr."""

import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user (data, config, paths, model ids): reported without a traceback."""


def exit_code(run: Callable[[], object]) -> int:
    """Run a command's body: 0 when it finishes, 2 with one ``error:`` line (no traceback) on bad input.

    A failing file operation (a path that is a file where a folder is needed, a full disk, no
    permission) is the environment's problem, not a bug: it is reported the same way, naming the
    path. Ctrl-C ends with exit code 130; everything written so far was written atomically.
    """
    try:
        run()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue (add --resume to continue a run "
              "mid-training)", file=sys.stderr)
        return 130
    return 0
