"""The one error the nsfwjs import raises."""

from __future__ import annotations


class ImportFailed(Exception):
    """The pinned nsfwjs models could not be imported into PyTorch.

    The message is one line: the file or tensor at fault, what was wrong, and what to do.
    """
