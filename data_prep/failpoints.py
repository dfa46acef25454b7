"""Test hooks: named moments at which a test can have a writer kill itself, and a switch for
the portable publishing path.

Two environment variables, read here and nowhere else:

``CATSDOGS_FAILPOINT=<name>``
    The process SIGKILLs itself when it reaches the failpoint ``<name>`` (one of
    :data:`POINTS`). Lets tests kill a writer exactly inside a window (between two renames,
    between a checkpoint's weights and its ``state.json``) that random timing would almost
    never hit.
``CATSDOGS_NO_RENAME_EXCHANGE=1``
    :func:`data_prep.safeio.publish_folder` uses the portable rename-aside + rename-in path
    instead of Linux's atomic ``renameat2(RENAME_EXCHANGE)`` swap.
"""

from __future__ import annotations

import os
import signal

DECODE = "decode"
"""A prepare worker, as it starts decoding a photo (as on a crash inside a decoder)."""
BUILDING = "output:building"
"""An output's hidden folder has just been created, before anything is written into it."""
PUBLISH_BEFORE = "publish:before"
"""The output is complete and flushed in its hidden folder, not yet published."""
PUBLISH_SWAPPED = "publish:swapped"
"""The new output was swapped into place; the old one is still in the hidden folder."""
PUBLISH_ASIDE = "publish:aside"
"""Portable path: the old output was renamed aside, the new one not yet in place."""
PUBLISH_RENAMED = "publish:renamed"
"""Portable path: the new output is in place, the old one is still aside."""
CHECKPOINT_WEIGHTS = "checkpoint:weights"
"""A checkpoint's new weight files are written, its ``state.json`` not yet."""

POINTS = frozenset({DECODE, BUILDING, PUBLISH_BEFORE, PUBLISH_SWAPPED, PUBLISH_ASIDE,
                    PUBLISH_RENAMED, CHECKPOINT_WEIGHTS})

FAILPOINT_VARIABLE = "CATSDOGS_FAILPOINT"
NO_RENAME_EXCHANGE_VARIABLE = "CATSDOGS_NO_RENAME_EXCHANGE"


def failpoint(name: str) -> None:
    """SIGKILL this process here when ``CATSDOGS_FAILPOINT`` names this point.

    ``name`` must be one of :data:`POINTS`, and so must the variable's value when it is set:
    a misspelled point would otherwise never fire, and the test that set it would pass
    without testing anything.
    """
    if name not in POINTS:
        raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(sorted(POINTS))}")
    chosen = os.environ.get(FAILPOINT_VARIABLE)
    if not chosen:
        return
    if chosen not in POINTS:
        raise ValueError(f"{FAILPOINT_VARIABLE}={chosen!r} is not a failpoint; known: "
                         f"{', '.join(sorted(POINTS))}")
    if chosen == name:
        os.kill(os.getpid(), signal.SIGKILL)


def rename_exchange_disabled() -> bool:
    """True when tests ask for the portable publishing path."""
    return bool(os.environ.get(NO_RENAME_EXCHANGE_VARIABLE))
