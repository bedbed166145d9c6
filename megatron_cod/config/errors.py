"""The one exception type the config package raises for anything a user got wrong."""


class ConfigError(ValueError):
    """Invalid configuration; the message is meant for the user and names the CLI flags involved."""
