"""The one exception type users see, and the exit codes the CLI maps it to."""

from __future__ import annotations

# Exit codes (documented in the README).
EXIT_OK = 0
EXIT_INPUT = 1  # bad input: checkpoint, config, recipe, destination
EXIT_USAGE = 2  # bad command-line usage (unknown flag, wrong type)
EXIT_VERIFY = 3  # the widened model does not match the source within tolerance
EXIT_IO = 4  # the system refused: disk full, permission denied, read error
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class HypercloneError(Exception):
    """A failure the user can fix. The CLI prints `str(err)` as one line and exits with `code`."""

    code: int = EXIT_INPUT

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(" ".join(message.split()))  # one line, always
        if code is not None:
            self.code = code


class VerificationError(HypercloneError):
    """The widened model's logits differ from the source's beyond the tolerance."""

    code = EXIT_VERIFY

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class Interrupted(HypercloneError):
    """SIGINT or SIGTERM arrived; everything half-made has been removed."""

    def __init__(self, signum: int) -> None:
        import signal

        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name}; nothing was left behind and the source is untouched",
            code=EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM,
        )
