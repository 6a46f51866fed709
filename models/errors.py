"""The one error type for bad input from a user.

Raised anywhere (an unknown model, a malformed ``config.json``, a bad config file, a bad flag value)
with a message that names the problem and what is allowed. The CLI turns it into a one-line message
on stderr and exit code 2, never a traceback.
"""


class InputError(ValueError):
    """Bad input from a user: the message says what was wrong and what is allowed."""
