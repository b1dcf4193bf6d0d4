"""The ``ittrna`` command line: thin wrappers over the library.

Every command has ``--help`` with examples; ``--json`` prints one JSON object as the last line of stdout
(accuracies as fractions in [0, 1]). Bad input (an :class:`~ittrna.errors.InputError`, a bad option, or a
file that cannot be accessed) gives one line on stderr naming the value or file and what is accepted, and a
non-zero exit, no traceback; inputs are checked before any output is written, and no output may overwrite
an input. Any other exception is a bug and surfaces with its traceback.
"""

from __future__ import annotations

from ittrna.cli.main import main
from ittrna.cli.options import CliError, _crossbar, _float_list
from ittrna.cli.parser import build_parser

__all__ = ["CliError", "_crossbar", "_float_list", "build_parser", "main"]
