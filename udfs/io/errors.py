"""The one root of the project's bad-input errors.

:class:`InputError` (and its subclasses: config, catalogue, stamp and cutout errors) means the
*input* is wrong: a file, a column, a key, a value. Jobs report it as one line naming the input,
exit code 2 (:func:`jobs.cli.job_main`). Anything else is a bug and keeps its traceback.
"""


class InputError(Exception):
    """Bad input (file, column, key or value): the message names it; reported in one line, exit 2."""
