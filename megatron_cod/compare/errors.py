"""The one error type of the comparison and sweep commands: reported as one line, exit 2."""


class CompareError(Exception):
    """Bad input or an unusable store; the message names the flag, file or key."""
