"""The one exception type the analysis CLI turns into a one-line error message."""


class AnalysisError(Exception):
    """Bad input or an unsupported model: reported to the user without a traceback."""
