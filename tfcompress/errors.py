"""Exceptions shared across tfcompress."""


class TfcompressError(ValueError):
    """Bad input to a tfcompress function; the message names the argument."""


class VerificationError(RuntimeError):
    """An exported or compressed model disagrees with its reference beyond tolerance."""
