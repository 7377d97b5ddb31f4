"""The one family of errors a user causes: the library raises them, the command line reports them once.

Each says what was wrong with what the user gave (a file, an option, a config key, a dataset) and what is valid,
so ``spikingformer`` prints ``error: <message>`` and exits with status 2 instead of a traceback.  The subclasses
keep the built-in type a caller would expect (a wrong value is a ``ValueError``, unreadable data a
``RuntimeError``), so ``except ValueError`` in a user's code still catches them.
"""


class UserError(Exception):
    """What the user gave is wrong; the message names the problem and what would be right."""


class InputError(UserError, ValueError):
    """A wrong option, argument, value or file content."""


class ConfigError(InputError):
    """A configuration key or value is wrong; the message says which and what is valid."""


class OfficialWeightsError(InputError):
    """A state_dict in an official repository's layout that this library's mapping does not know
    (``weights.official``)."""


class MissingDependency(UserError, ImportError):
    """An optional package a model or command needs is not installed (the message says what to install)."""


class DataError(UserError, RuntimeError):
    """Data missing or malformed; the message says what was expected where."""


class OptionError(UserError, TypeError):
    """A model option that does not exist, or a value of the wrong type for it."""
