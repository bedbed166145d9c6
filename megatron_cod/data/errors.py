"""The one exception type the data pipeline raises for bad input: its message is shown as is."""


class DataError(Exception):
    """Bad input or environment, explained in one line (file and line where known).

    The command-line tool prints ``str(error)`` and exits non-zero without a traceback, so the
    message must name what is wrong and where, and what to do when that is not obvious.
    """
