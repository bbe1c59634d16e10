"""The package's exceptions and warnings: one hierarchy, so callers can catch or filter by kind."""


class AefError(Exception):
    """Base of every error aef-pipeline raises on purpose."""


class UserInputError(AefError):
    """A request that cannot be carried out as given. The message names the offending value and the
    fix; the command line prints it as one line and exits with status 2, having written nothing."""


class AefWarning(UserWarning):
    """Base of the typed warnings for degraded but usable data; each is also recorded in the run
    report. Silence or escalate them with the standard `warnings` filters."""


class StorageFullError(AefError):
    """The output's disk or quota filled up during a run. Every tile-period the store records is
    complete; the command line prints one line and exits with status 1, and rerunning the same
    command once there is space finishes the rest."""


class TileUnreadableError(AefError):
    """Scenes were found for a tile-period but none of their pixels could be read: nothing was
    written for it, and rerunning retries it."""
