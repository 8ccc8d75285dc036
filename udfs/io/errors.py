"""The one root of the project's bad-input errors.

:class:`InputError` (and its subclasses: config, catalogue, stamp and cutout errors) means the
*input* is wrong: a file, a column, a key, a value. Jobs report it as one line naming the input,
exit code 2 (:func:`jobs.cli.job_main`). Anything else is a bug and keeps its traceback.
:class:`RemoteError` is the one exception: the input is fine but a remote store kept failing
(after every retry), which also stops a job with one line naming the file.
"""


class InputError(Exception):
    """Bad input (file, column, key or value): the message names it; reported in one line, exit 2."""


class RemoteError(InputError):
    """A remote read or write that kept failing after every retry; the message names the file."""
