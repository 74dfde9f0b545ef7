"""LookupPolicy: VERP, aliases and added headers from lookup records."""

from __future__ import annotations

from slimta.envelope import Envelope
from slimta.lookup.drivers.dict import DictLookup
from slimta.lookup.policy import LookupPolicy
from slimta.policy import QueuePolicy


def _envelope(sender="sender@src.test", rcpts=("a@dst.test",)):
    env = Envelope(sender, list(rcpts))
    env.parse(b"Subject: hi\r\n\r\nbody\r\n")
    return env


def test_is_a_queue_policy_with_40_defaults():
    policy = LookupPolicy(DictLookup({}, "{address}"))
    assert isinstance(policy, QueuePolicy)
    assert (policy.on_sender, policy.on_rcpts) == (False, True)


def test_recipient_alias_full_address_domain_and_template():
    records = {
        "a@dst.test": {"alias": "alice@mailbox.test"},
        "b@dst.test": {"alias": "new.test"},  # a domain: keep the local part
        "c@dst.test": {"alias": "{localpart}+{domain}@archive.test"},
    }
    env = _envelope(rcpts=["a@dst.test", "b@dst.test", "c@dst.test", "d@dst.test"])
    LookupPolicy(DictLookup(records, "{address}")).apply(env)
    assert env.recipients == ["alice@mailbox.test", "b@new.test", "c+dst.test@archive.test", "d@dst.test"]
    assert env.sender == "sender@src.test"  # on_sender=False


def test_domain_wide_alias_by_domain_key():
    env = _envelope(rcpts=["x@old.test", "y@old.test"])
    LookupPolicy(DictLookup({"old.test": {"alias": "new.test"}}, "{domain}")).apply(env)
    assert env.recipients == ["x@new.test", "y@new.test"]


def test_sender_verp_encoding():
    records = {"list@src.test": {"verp": "bounces.src.test"}}
    env = _envelope(sender="list@src.test")
    LookupPolicy(DictLookup(records, "{address}"), on_sender=True, on_rcpts=False).apply(env)
    assert env.sender == "list=src.test@bounces.src.test"


def test_verp_of_bare_domain():
    assert LookupPolicy._verp_enc("src.test", "b.test") == "src.test@b.test"


def test_verp_then_alias_on_sender():
    records = {"list@src.test": {"verp": "bounces.src.test", "alias": "other.test"}}
    env = _envelope(sender="list@src.test")
    LookupPolicy(DictLookup(records, "{address}"), on_sender=True).apply(env)
    assert env.sender == "list=src.test@other.test"


def test_null_sender_is_never_rewritten():
    records = {"": {"alias": "someone@src.test"}}
    env = _envelope(sender="")
    LookupPolicy(DictLookup(records, "{address}"), on_sender=True).apply(env)
    assert env.sender == ""


def test_add_headers_json_and_mapping_prepended():
    records = {
        "a@dst.test": {"add_headers": '{"X-Tenant": "blue", "X-Plan": "gold"}'},
        "b@dst.test": {"add_headers": {"X-Mapped": "yes"}},
        "c@dst.test": {"add_headers": "not json"},
        "d@dst.test": {"add_headers": "[1, 2]"},
    }
    env = _envelope(rcpts=["a@dst.test", "b@dst.test", "c@dst.test", "d@dst.test"])
    LookupPolicy(DictLookup(records, "{address}")).apply(env)
    assert env.headers is not None
    assert env.headers.keys() == ["X-Mapped", "X-Plan", "X-Tenant", "Subject"]
    assert env.headers["X-Tenant"] == "blue"
    assert env.recipients == ["a@dst.test", "b@dst.test", "c@dst.test", "d@dst.test"]


def test_template_values_are_not_rescanned():
    records = {"{domain}@dst.test": {"alias": "{localpart}@x.test"}}
    env = _envelope(rcpts=["{domain}@dst.test"])
    LookupPolicy(DictLookup(records, "{address}")).apply(env)
    assert env.recipients == ["{domain}@x.test"]


def test_non_mapping_record_is_ignored():
    env = _envelope()
    LookupPolicy(DictLookup({"a@dst.test": "just a string"}, "{address}")).apply(env)
    assert env.recipients == ["a@dst.test"]
