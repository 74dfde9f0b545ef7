"""Table lookups: aliases, credentials, routing and policy data by key.

A *lookup* answers one question -- "what do we know about this key?" --
from a backend the operator maintains: a Python mapping, a list of regular
expressions, Redis, or an SQL database.  Every driver has the same two
calls, :meth:`~slimta.lookup.drivers.LookupBase.lookup` (keyword arguments
in, a record or ``None`` out) and
:meth:`~slimta.lookup.drivers.LookupBase.lookup_address`, so validators,
policies and relays can be written once and pointed at any backend.

Drivers (one module each, as in python-slimta 5):

- :class:`slimta.lookup.drivers.dict.DictLookup`
- :class:`slimta.lookup.drivers.regex.RegexLookup`
- :class:`slimta.lookup.drivers.redis.RedisLookup`
- :class:`slimta.lookup.drivers.dbapi2.DBAPI2Lookup` and
  :class:`~slimta.lookup.drivers.dbapi2.SQLite3Lookup`

and one consumer, :class:`slimta.lookup.policy.LookupPolicy`, which applies
``alias``, ``verp`` and ``add_headers`` records to envelopes before they are
queued.

Using a lookup from :class:`~slimta.edge.smtp.SmtpValidators`::

    users = SQLite3Lookup("users.db", "SELECT secret FROM users WHERE name = :name")
    mailboxes = DictLookup({"alice@example.com": {}}, "{address}")

    class Validators(SmtpValidators):
        def handle_auth(self, reply, creds):
            record = users.lookup(name=creds.authcid)
            if not record or not creds.check_secret(record["secret"]):
                reply.code, reply.message = "535", "5.7.8 Authentication failed"

        def handle_rcpt(self, reply, recipient, params):
            if mailboxes.lookup_address(recipient) is None:
                reply.code, reply.message = "550", "5.1.1 No such mailbox"

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from slimta.lookup.drivers import LookupBackendError, LookupBase

__all__ = ["LookupBackendError", "LookupBase"]
