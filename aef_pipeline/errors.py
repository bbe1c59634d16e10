"""The package's exceptions and warnings: one hierarchy, so callers can catch or filter by kind."""


class AefError(Exception):
    """Base of every error aef-pipeline raises on purpose."""


class UserInputError(AefError):
    """A request that cannot be carried out as given. The message names the offending value and the
    fix; the command line prints it as one line and exits with status 2, having written nothing."""


class AefWarning(UserWarning):
    """Base of the typed warnings for degraded but usable data; each is also recorded in the run
    report. Silence or escalate them with the standard `warnings` filters."""
