"""``hacontrol import-keepalived FILE [-o OUT.yaml] [--host NAME] [--secret-file PATH]``.

Parses FILE (``keepalived_parse``), converts it (``keepalived_convert``) and loads the result with
hacontrol's own config loader (without the file checks: the key is created afterwards), so what
is written is a config ``hacontrol check`` accepts once ``ha.secret_file`` exists. Exit 0 with
the YAML on stdout or in OUT (written aside, then renamed: never half a file); exit 1 with one
``file:line: what`` line per error and their count on stderr. No traceback for any input: an
unexpected failure of the importer itself is reported as such, with exit 1.
"""

from __future__ import annotations

from typing import TextIO

from hacontrol.fsutil import write_atomic
from hacontrol.migrate.keepalived_convert import DEFAULT_SECRET, convert
from hacontrol.migrate.keepalived_parse import default_host, parse_file
from hacontrol.migrate.keepalived_source import KeepalivedError

EXIT_OK, EXIT_ERROR = 0, 1


def import_keepalived(path: str, host: str | None = None,
                      secret_file: str = DEFAULT_SECRET) -> tuple[str, int]:
    """(the YAML text, the number of notes) for the keepalived.conf at ``path``; raises
    KeepalivedError listing every problem."""
    from hacontrol.config import ConfigError, loads

    host = host if host is not None else default_host()
    parsed = parse_file(path, host)
    out = convert(parsed, path, host, secret_file)
    try:
        loads(out.text, source="<converted>", check_files=False)
    except ConfigError as e:  # a bug of the importer: say so, with hacontrol's own words
        raise KeepalivedError([]) from e
    return out.text, out.notes


def run(path: str, output: str | None, host: str | None, secret_file: str | None,
        out: TextIO, err: TextIO) -> int:
    """The command: the exit code, after writing the YAML or the errors."""
    try:
        text, notes = import_keepalived(path, host, secret_file or DEFAULT_SECRET)
    except KeepalivedError as e:
        if isinstance(e.__cause__, Exception) and not e.issues:
            print(f"{path}: internal error: the converted config is refused by hacontrol's "
                  f"loader (please report it):\n{e.__cause__}", file=err)
            return EXIT_ERROR
        for issue in e.issues:
            print(issue, file=err)
        n = len(e.issues)
        print(f"{path}: {n} error{'s' if n != 1 else ''}", file=err)
        return EXIT_ERROR
    except (RecursionError, MemoryError, ValueError, OSError) as e:
        print(f"{path}: internal error of the importer: {type(e).__name__}: {e}", file=err)
        return EXIT_ERROR
    if output is None:
        out.write(text)
    else:
        try:
            write_atomic(output, text, prefix=".import-")
        except OSError as e:
            print(f"{output}: cannot write: {e.strerror or e}", file=err)
            return EXIT_ERROR
    print(f"{path}: converted, {notes} thing{'s' if notes != 1 else ''} not carried over "
          "(comments starting '# keepalived:')", file=err)
    return EXIT_OK
