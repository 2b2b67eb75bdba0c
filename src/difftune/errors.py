"""The one exception type a user sees as a single line (bad config, unloadable model or data)."""


class DifftuneError(Exception):
    """A user-facing error: the message names the key, the value and what would be valid."""
