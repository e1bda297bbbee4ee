"""The one exception type for errors a user can cause (bad files, bad options)."""


class ImcapError(Exception):
    """A user-facing error; the CLI prints `imcap: error: <message>` and exits with code 2."""
