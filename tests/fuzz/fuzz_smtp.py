"""Coverage-guided fuzzing of the SMTP cores with atheris.

Run (from the repository root)::

    .venv/bin/python tests/fuzz/fuzz_smtp.py server -max_total_time=60 tests/fuzz/corpus/server
    .venv/bin/python tests/fuzz/fuzz_smtp.py client -max_total_time=60 tests/fuzz/corpus/client

The first argument picks the target (:func:`tests.fuzz.targets.fuzz_server`
or :func:`~tests.fuzz.targets.fuzz_client`); the rest are libFuzzer options
and corpus directories.  New interesting inputs are written to the first
corpus directory; a crash is written to ``crash-*`` in the current directory
and must become a file of the corpus (so the normal suite replays it).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import atheris  # type: ignore[import-not-found]

with atheris.instrument_imports():
    import slimta.smtp._clientcore
    import slimta.smtp.protocol  # noqa: F401

from tests.fuzz.targets import fuzz_client, fuzz_server


def main() -> None:
    """Pick the target named by the first argument and start libFuzzer."""
    targets = {"server": fuzz_server, "client": fuzz_client}
    if len(sys.argv) < 2 or sys.argv[1] not in targets:
        sys.exit("usage: fuzz_smtp.py server|client [libFuzzer options] [corpus dirs]")
    target = targets[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
