#!/usr/bin/env bash
# Create the peer virtualenvs used by bench/bench_smtp.py, if missing:
#   bench/peers/python-slimta  python-slimta 5.0.5 (the reference implementation)
#   bench/peers/aiosmtpd       aiosmtpd 1.4.6
# bench/peers/ is git-ignored.  A venv that already exists and imports is reused
# (another process may have created it); a broken one is rebuilt.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
peers="$here/peers"
py="${PYTHON:-python3}"
mkdir -p "$peers"

# Import checks run from /tmp so that this repository's slimta/ is not on sys.path.
check() {  # check VENV PYTHON-CODE
    [ -x "$1/bin/python" ] && (cd /tmp && "$1/bin/python" -W ignore -c "$2") >/dev/null 2>&1
}

make_venv() {  # make_venv NAME CHECK-CODE PIP-ARGS...
    local name="$1" code="$2"
    shift 2
    local venv="$peers/$name"
    if check "$venv" "$code"; then
        echo "peers_setup: $name: already there"
        return 0
    fi
    # Serialise with any other helper building the same venv.
    exec 9>"$peers/.$name.lock"
    flock -w 600 9
    if check "$venv" "$code"; then
        echo "peers_setup: $name: built by another process"
        exec 9>&-
        return 0
    fi
    echo "peers_setup: $name: creating"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$@"
    check "$venv" "$code" || { echo "peers_setup: $name: import check failed" >&2; exit 1; }
    exec 9>&-
}

make_venv python-slimta \
    "import slimta.edge.smtp, slimta.queue, slimta.queue.dict, slimta.relay.blackhole" \
    'setuptools>=70,<81' 'pycares<5' 'python-slimta==5.0.5'
make_venv aiosmtpd \
    "import aiosmtpd.controller, aiosmtpd.smtp" \
    'aiosmtpd==1.4.6'

for tool in /usr/sbin/smtp-source /usr/sbin/smtp-sink; do
    [ -x "$tool" ] || echo "peers_setup: $tool missing (apt-get install postfix)" >&2
done
echo "peers_setup: done"
