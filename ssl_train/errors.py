"""User-facing errors: raised for bad input and printed as one line by the CLI entries."""


class UserError(ValueError):
    """A mistake in the user's config or data; the message names the key and what to do."""


class DataNotFoundError(UserError, FileNotFoundError):
    """An expected dataset file is missing; the message says where to put it."""
