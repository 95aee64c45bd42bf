"""Exceptions the toolkit raises for bad input.

Every message says what was expected, what came, and how to fix it. They subclass ValueError (or
TypeError) so callers that already catch those keep working.
"""


class FheToolkitError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class ScoringInputError(FheToolkitError, ValueError):
    """Predictions, targets, features or stakes that cannot be scored as given."""


class ScoringTypeError(FheToolkitError, TypeError):
    """A scoring function got the wrong kind of object (e.g. a Series where a DataFrame goes)."""


class DataValidationError(FheToolkitError, ValueError):
    """A tournament data file or frame that does not follow the Numerai format."""


class FundError(FheToolkitError, ValueError):
    """A fund operation refused, with the reason."""
