"""One exception type for every problem a user can fix: its message is one line, shown as is."""


class ScwbError(ValueError):
    """Bad input or a refused action. The message says what is wrong and what to do."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
