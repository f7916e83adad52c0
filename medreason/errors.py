"""One base class for mistakes a user can fix: the scripts print these as one line, without a traceback."""


class UserError(ValueError):
    """Bad settings, data or environment; the message names the setting, file or line, and the fix."""
