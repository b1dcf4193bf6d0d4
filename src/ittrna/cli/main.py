"""``main``: run one command, turning bad input into one line on stderr and an exit status."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ittrna.cli.options import EXIT_ERROR, EXIT_USAGE, CliError
from ittrna.cli.parser import build_parser
from ittrna.errors import ConfigError, InputError


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ittrna`` command; returns the exit status."""
    for stream in (sys.stdout, sys.stderr):  # a path or title that is not valid Unicode is shown, not a crash
        if stream is not None and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if sys.stdout is None or sys.stdout.closed:  # started with stdout closed: the output would be lost silently
        sys.stderr.write("ittrna: error: standard output is closed; the command's output would be lost "
                         "(redirect it to a file or /dev/null instead)\n")
        return EXIT_ERROR
    try:
        if getattr(args, "definition", None):
            from ittrna.models import trust_definition

            for named in args.definition:  # the user's own networks whose checkpoints may run their code
                trust_definition(named)
        args.func(args)
        sys.stdout.flush()
    except (CliError, InputError) as exc:
        sys.stderr.write(f"ittrna: error: {_one_line(str(exc))}\n")
        return EXIT_USAGE if isinstance(exc, (CliError, ConfigError)) else EXIT_ERROR
    except OSError as exc:  # file access: missing file, permission, disk full; name the path
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        reason = exc.strerror or str(exc)
        sys.stderr.write(f"ittrna: error: {where + ': ' if where else ''}{_one_line(reason)}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("ittrna: interrupted\n")
        return 130
    return 0
