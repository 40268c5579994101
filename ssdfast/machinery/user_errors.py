"""What a tool's `error:` line, or a warning, may show of the data it was handed: one line, at most MAX_SHOWN characters.

A message that quotes a value from a user's file (a data.yaml entry, a class name, a record id, an XML
tag, a file name) must stay one readable line whatever the file holds: a 510-byte YAML alias bomb
expands to a list whose repr is a gigabyte, and a file name may hold a newline that forges a second
line. Every such value goes through shown(), which never builds the whole repr (reprlib stops at a few
items and characters per level) and cuts what is left to MAX_SHOWN characters.
"""

from __future__ import annotations

import json
import reprlib

MAX_SHOWN = 200  # characters of a value in a message, the ellipsis included

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 3, MAX_SHOWN, MAX_SHOWN, MAX_SHOWN
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def shown(value) -> str:
    """`value` as a message shows it: a short printable string as it is (a path, a name); anything else
    as its repr (quotes, escaped newlines), at most MAX_SHOWN characters, a cut one ending in '...'.

    >>> shown("images/train"), shown("a\\nb"), len(shown("a" * 1000)), shown(list(range(100)))
    ('images/train', "'a\\\\nb'", 200, '[0, 1, 2, 3, 4, 5, 6, 7, ...]')
    """
    if isinstance(value, str) and len(value) <= MAX_SHOWN and value.isprintable():
        return value
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int of over 4300 digits has no repr (Python's own guard)
        text = f"<a {type(value).__name__} too long to show>"
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def parse_json(data: str | bytes):
    """json.loads for the text of a file a user hands ssdfast: a ValueError (as for any JSON it cannot take)
    also when the text nests deeper than Python's stack ('[' * 100_000 is 100 KB), where json raises a
    RecursionError that no `except ValueError` around it catches."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def error_line(error: BaseException) -> str:
    """What a tool's `error:` line says of the error it stops on: an OSError the system raised about a path
    (a name longer than the file system takes, a folder where a file should be, no permission) as its
    reason and the path, shown(); any other error, its own message (ssdfast's name their input already)."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.strerror or type(error).__name__}: {shown(str(error.filename))}"
    return str(error)
