"""The SMTP smuggling corpus of RELIABILITY.md recipe R2, shared by every test that uses it.

A session opens a transaction, sends ``Subject: outer ... body``, then one of
:data:`VARIANTS` (a fake end of data), then :data:`SMUGGLED` (a second
transaction from ``ceo@legit.test``).  :data:`CONTROL` is the one legitimate
end of data.
"""

from __future__ import annotations

#: Fake ends of data: bare LF/CR forms, NUL, and unstuffed-dot lines.
VARIANTS: list[bytes] = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r.\r",
    b"\r\n.\r\r\n",
    b"\r\n\x00.\r\n",
    b"\r\n. \r\n",
    b"\r\n.\t\r\n",
]
#: The real end of data (two transactions, legitimately).
CONTROL = b"\r\n.\r\n"
#: What comes before the message data, after EHLO.
MAIL_RCPT_DATA = b"MAIL FROM:<a@legit.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n"
#: The smuggled transaction that follows a fake end of data.
SMUGGLED = (
    b"MAIL FROM:<ceo@legit.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nevil\r\n.\r\nQUIT\r\n"
)
