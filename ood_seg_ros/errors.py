"""The one exception type the package raises for bad input, config or files."""


class OodSegError(Exception):
    """
    A user-facing error: one line that says what is wrong and where.

    The CLI prints it as ``error: <message>`` and exits with status 2; the node logs
    it (rate-limited), counts it in diagnostics and keeps running.
    """

    def __init__(self, message: str):
        super().__init__(' '.join(str(message).split()))
