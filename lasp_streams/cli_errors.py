"""Failures of ``lasp-streams`` commands as one or two lines a person can act on.

:class:`ReadableErrors` is the click group class of ``lasp-streams``: an error raised on purpose
(:class:`~lasp_streams.errors.LaspError`, whose messages name the input, the step and the fix)
prints as ``Error: <message>``; any other exception prints its type and message with a hint to
rerun with ``--verbose``, which shows the traceback instead. Exit status 1. Usage errors stay
click's (status 2). The current directory is importable, so ``lasp-streams worker mytopo`` finds
``./mytopo.py`` as faust and bytewax do.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from lasp_streams.errors import LaspError

__all__ = ["ReadableErrors", "first_lines"]

_MAX_LINE = 400


def first_lines(text: str, lines: int = 2) -> str:
    """At most ``lines`` lines of ``text``, each cut to a readable length."""
    kept = [line[:_MAX_LINE] for line in str(text).strip().splitlines()[:lines]]
    return "\n".join(kept) or "(no message)"


class ReadableErrors(click.Group):
    """A click group that turns exceptions into short messages (see the module docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        verbose = bool(ctx.params.get("verbose"))
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except LaspError as exc:
            if verbose:
                raise
            raise click.ClickException(_keep_setup_detail(exc)) from None
        except Exception as exc:
            if verbose:
                raise
            raise click.ClickException(
                f"{type(exc).__name__}: {first_lines(str(exc), 1)} "
                "(rerun with lasp-streams --verbose ... for the traceback)"
            ) from None


def _keep_setup_detail(exc: LaspError) -> str:
    # A broker that did not start explains itself with its log's last lines: keep those.
    from lasp_streams.errors import KafkaSetupError

    text = str(exc)
    if isinstance(exc, KafkaSetupError) and "did not start" in text.splitlines()[0]:
        return text
    return first_lines(text)
