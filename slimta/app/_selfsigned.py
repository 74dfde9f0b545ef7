"""A self-signed certificate for the embedded default's submission edge.

AUTH PLAIN and LOGIN are refused without TLS, and the credentials file
holds hashes (which CRAM-MD5 cannot use), so the default submission edge
needs a certificate.  When none exists under ``./var/tls`` one is made
with the ``openssl`` program (an EC P-256 key, valid for ten years, for
``localhost``); clients must skip verification or trust that file.
"""

from __future__ import annotations

import logging
import os
import shutil

from gevent import subprocess

__all__ = ["ensure"]

_log = logging.getLogger(__name__)


def ensure(directory: str) -> tuple[str, str]:
    """Return ``(cert, key)`` paths in ``directory``, making them if missing.

    When ``openssl`` is not installed nothing is made and the paths are
    returned anyway; the configuration check then reports the missing file.
    """
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        _log.warning("openssl not found: cannot make %s for the submission edge", cert)
        return cert, key
    os.makedirs(directory, mode=0o700, exist_ok=True)
    args = [
        openssl,
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        key,
        "-out",
        cert,
    ]
    result = subprocess.run(args, capture_output=True, check=False)
    if result.returncode != 0:
        _log.warning("openssl failed to make %s: %s", cert, result.stderr.decode(errors="replace").strip())
    else:
        os.chmod(key, 0o600)
        _log.info("made a self-signed certificate %s for the submission edge", cert)
    return cert, key
