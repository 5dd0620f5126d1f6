"""The one exception type that scripts turn into a single line on stderr."""


class UserError(Exception):
    """Bad input from the user (data, config, paths, model ids): reported without a traceback."""
