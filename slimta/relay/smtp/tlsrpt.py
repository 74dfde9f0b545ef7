"""SMTP TLS reporting (RFC 8460): counts of TLS policy successes and failures.

Give a :class:`TlsReport` to :class:`~slimta.relay.smtp.tlspolicy.TlsPolicy`
(``report=``): every session the policy governs adds a success or a failure
(with its RFC 8460 result type: ``starttls-not-supported``,
``validation-failure``, ``sts-policy-fetch-error``...) for its policy
domain.  :meth:`TlsReport.to_json` gives the aggregate report document of
RFC 8460 section 4 for a period, ready to be sent to the domain's
``_smtp._tls`` ``rua`` address (sending is left to the application).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TlsReport"]


@dataclass
class _Counts:
    success: int = 0
    failures: Counter[tuple[str, str | None]] = field(default_factory=Counter)


def _when(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TlsReport:
    """Aggregate TLS results per policy domain, exportable as TLSRPT JSON."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str | None], _Counts] = {}

    def record(
        self, domain: str, policy_type: str, policy: str | None, mx_host: str | None, result: str | None
    ) -> None:
        """Count one session (``result`` None) or one failure.

        Args:
            domain: The policy domain (the recipient domain).
            policy_type: ``"sts"``, ``"tlsa"`` or ``"no-policy-found"``.
            policy: The policy text (MTA-STS file, TLSA records), or None.
            mx_host: The receiving MX host, for failures.
            result: None for a success, else an RFC 8460 result type.
        """
        counts = self._counts.setdefault((domain.lower(), policy_type, policy), _Counts())
        if result is None:
            counts.success += 1
        else:
            counts.failures[(result, mx_host)] += 1

    def totals(self, domain: str) -> tuple[int, int]:
        """``(successes, failures)`` counted so far for ``domain``."""
        ok = bad = 0
        for (name, _, _), counts in self._counts.items():
            if name == domain.lower():
                ok += counts.success
                bad += sum(counts.failures.values())
        return ok, bad

    def to_json(
        self, organization: str, contact: str, report_id: str, start: float, end: float
    ) -> dict[str, Any]:
        """The RFC 8460 section 4.3 report (a dict for :func:`json.dumps`).

        Args:
            organization: ``organization-name``.
            contact: ``contact-info`` (an email address).
            report_id: ``report-id``.
            start: Start of the period, a UNIX time.
            end: End of the period, a UNIX time.
        """
        policies = []
        for (domain, policy_type, policy), counts in sorted(self._counts.items(), key=lambda i: i[0][:2]):
            policies.append(
                {
                    "policy": {
                        "policy-type": policy_type,
                        "policy-string": policy.splitlines() if policy else [],
                        "policy-domain": domain,
                    },
                    "summary": {
                        "total-successful-session-count": counts.success,
                        "total-failure-session-count": sum(counts.failures.values()),
                    },
                    "failure-details": [
                        {
                            "result-type": result,
                            **({"receiving-mx-hostname": host} if host else {}),
                            "failed-session-count": n,
                        }
                        for (result, host), n in sorted(
                            counts.failures.items(), key=lambda i: (i[0][0], i[0][1] or "")
                        )
                    ],
                }
            )
        return {
            "organization-name": organization,
            "date-range": {"start-datetime": _when(start), "end-datetime": _when(end)},
            "contact-info": contact,
            "report-id": report_id,
            "policies": policies,
        }
