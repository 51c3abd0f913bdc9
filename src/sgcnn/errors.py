"""User-facing errors.

Every mistake a user can make (a bad ratio, an unknown model, a corrupt checkpoint, a data path
that does not exist) raises :class:`SgcnnError` with a message that names the problem and says
what to do. The command line prints that message and exits with status 2, without a traceback.
Anything else that escapes is a bug in sgcnn.
"""


class SgcnnError(Exception):
    """A problem with the user's input, explained in the message."""


def describe(err: BaseException) -> str:
    """``"Type: first line of the message"`` (200 characters at most), to quote a library's
    error inside an :class:`SgcnnError`."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__
