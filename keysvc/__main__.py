"""`python -m keysvc` and the `keysvc` command: without the server extra installed, one line saying which
install it needs (exit status 1) instead of a traceback."""

from __future__ import annotations

import sys

from keysvc.extras import SERVER_EXTRA, missing_server_extra


def main() -> int:
    """Entry point of the `keysvc` command."""
    try:
        from keysvc.cli import main as cli_main
    except ModuleNotFoundError as exc:
        if not missing_server_extra(exc):
            raise
        print(SERVER_EXTRA, file=sys.stderr)
        return 1
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
