"""The one exception type the CLI turns into a short message instead of a traceback."""


class TokenizerUserError(Exception):
    """A problem the user can fix (bad input, bad path, bad option).

    The message is a complete paragraph: what is wrong, where (file and line), and the fix.
    """
