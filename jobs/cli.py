"""What every job's command line shares."""


class InputError(ValueError):
    """Bad input (file, column, key): reported as one line naming it, exit code 2."""
