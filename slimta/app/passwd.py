"""``slimta passwd``: make a passlib hash for a credentials file.

.. versionadded:: 0.1.0

Prints ``user:hash`` (pbkdf2-sha256, passlib's default rounds), or, with
``--file``, adds the line to a credentials file (replacing the user's old
line), written atomically with mode 0600.  The password is asked twice on
the terminal, or read from standard input with ``--stdin`` (scripts).
"""

from __future__ import annotations

import getpass
import os
import sys
import tempfile

from passlib.hash import pbkdf2_sha256

__all__ = ["hash_password", "main", "update_file"]


def hash_password(password: str) -> str:
    """Return the passlib hash stored for ``password``."""
    result: str = pbkdf2_sha256.hash(password)
    return result


def update_file(path: str, user: str, hashed: str) -> None:
    """Put ``user:hashed`` into the credentials file at ``path``."""
    lines: list[str] = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            lines = [ln for ln in fh.read().splitlines() if ln.partition(":")[0].strip() != user]
    lines.append(f"{user}:{hashed}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".credentials-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(user: str, path: str | None, from_stdin: bool) -> int:
    """Run ``slimta passwd``; return the exit status."""
    if not user or ":" in user or any(c.isspace() for c in user):
        sys.stderr.write("slimta passwd: the user name must be non-empty, without ':' or spaces\n")
        return 2
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {user}: ")
        if getpass.getpass("again: ") != password:
            sys.stderr.write("slimta passwd: the passwords differ\n")
            return 1
    if not password:
        sys.stderr.write("slimta passwd: empty password refused\n")
        return 1
    hashed = hash_password(password)
    if path:
        update_file(path, user, hashed)
        sys.stderr.write(f"slimta passwd: {user} written to {path}\n")
    else:
        sys.stdout.write(f"{user}:{hashed}\n")
    return 0
