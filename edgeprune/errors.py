"""The one error type for user mistakes and unusable inputs."""


class EdgepruneError(Exception):
    """A problem the user can fix (bad path, unknown name, mismatched data).

    The message is one line naming the problem and the fix; the CLI prints it without a
    traceback and exits with code 2.
    """
