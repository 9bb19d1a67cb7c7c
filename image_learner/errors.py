"""Error types and message helpers shared by every stage (no imports of the tool's own modules).

A stage raises :class:`InputError` for a problem the user can fix; the command line prints its message
as is and exits 2.
"""

from __future__ import annotations


class InputError(Exception):
    """A problem with the user's input files or options; the message is shown as is."""


MAX_LISTED = 10  # rows/files named in a message before "…and N more"


def listed(items, limit: int = MAX_LISTED, sep: str = ", ") -> str:
    """The first ``limit`` items for a message, then how many more there are."""
    items = [str(i) for i in items]
    return sep.join(items[:limit]) + (f" …and {len(items) - limit} more" if len(items) > limit else "")
