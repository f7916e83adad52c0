"""One base class for mistakes a user can fix: the scripts print these as one line, without a traceback."""


class UserError(ValueError):
    """Bad settings, data or environment; the message names the setting, file or line, and the fix."""


def run_cli(main) -> None:
    """Run a script's main(argv): a UserError prints as one line (exit 1); an int result is the exit status."""
    import sys

    from . import quiet
    quiet.install()  # before the script imports torch and friends
    try:
        status = main(sys.argv[1:])
    except UserError as error:
        sys.exit(f"error: {error}")
    sys.exit(status if isinstance(status, int) else 0)
