"""The one exception type for a user's mistake found while working (a corpus with no usable record, a run that does
not exist, a model too large for the device): its message says what is wrong and the way out. Kept apart from
``rpt.refusal`` (the CLI's preflight, which reads the whole config) so library modules can raise it without
importing the config."""


class Refusal(ValueError):
    """A user mistake found while working; its message says what is wrong and the way out."""


class MissingInput(Refusal, FileNotFoundError):
    """A stage's input that the run does not have (a checkpoint, a finished stage): a mistake in what was asked, so
    the CLI refuses it in one line; still a ``FileNotFoundError`` for code that looks for one."""
