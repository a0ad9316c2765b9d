"""The data layer's error: every reader raises it, naming the path or field at fault."""


class DataError(ValueError):
    """A dataset on disk or in memory is malformed; the message names the path or field."""
