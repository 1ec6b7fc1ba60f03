"""The one exception type a user can cause.

Every error that bad input can trigger (a missing file, a corrupt weights file, an
unknown layer name, an image too large, no GPU) is raised as ``MiniVGGError`` with a
message that names the thing and says what to do. The command-line tools print the
message on one line and exit with status 2; they never show a traceback for it.
"""


class MiniVGGError(Exception):
    """A problem with the user's input or environment, with a one-line explanation."""
