"""Exceptions shared across tfcompress."""


class TfcompressError(ValueError):
    """Bad input to a tfcompress function; the message names the argument."""


class VerificationError(RuntimeError):
    """An exported or compressed model disagrees with its reference beyond tolerance.

    ``relax`` maps each tolerance argument that failed (``min_agreement``, ``max_ppl_ratio``,
    ``max_abs_error``) to the value that would have passed, for a message naming the option.
    """

    def __init__(self, message: str, relax: dict | None = None):
        super().__init__(message)
        self.relax = dict(relax or {})
