"""Errors raised by the codecs.  The stack catches them: bad input is dropped and counted."""


class DecodeError(ValueError):
    """A frame, packet or segment could not be decoded.

    ``reason`` is a short machine-friendly tag used as a drop-counter key
    (for example ``"ipv4-bad-checksum"``).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
