"""RFC 7208 ``check_host()`` for :mod:`slimta.util.spf`: record parser, macros, mechanisms.

Strategy: :mod:`slimta.util.spf` is what users call (:func:`~slimta.util.spf.check_host`,
:class:`~slimta.util.spf.EnforceSpf`); this module is the evaluation
behind it, in the order RFC 7208 describes it:

* record syntax (section 4.6, 5, 6): :func:`_parse_record` turns the one
  ``v=spf1`` TXT record into mechanisms and the ``redirect``/``exp``
  modifiers, or names the first syntax error (``permerror``);
* macros (section 7): :func:`_macro_tokens` checks a macro-string once,
  :func:`_expand` and :func:`_target` expand it for one evaluation;
* evaluation (section 4, 5): :func:`evaluate` fetches the record and
  tries each mechanism against the client; a :class:`Context` carries
  what one ``check_host()`` and its includes share: the identities, the
  deadline, and the DNS-term and void-lookup counts that enforce the
  limits of section 4.6.4.

Every function answers with a value, never an exception: a *verdict*
``(result, reason)`` ends the evaluation, so a DNS failure or a broken
limit becomes ``temperror`` or ``permerror`` where it happens.
"""

from __future__ import annotations

import ipaddress
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from slimta.util.dns import DNSError, DNSNoDataError, DNSNotFoundError, DNSResolver

__all__ = ["Context", "clean", "evaluate"]

_IP: TypeAlias = "ipaddress.IPv4Address | ipaddress.IPv6Address"
#: A finished evaluation: ``(result, reason)``.
_Verdict: TypeAlias = "tuple[str, str]"

_QUALIFIERS: Final = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_DNS_TERM_LIMIT: Final = 10
_VOID_LIMIT: Final = 2
_MX_LIMIT: Final = 10
_PTR_LIMIT: Final = 10
_REASON_MAX: Final = 256


# -- record syntax ----------------------------------------------------------------

_VERSION = re.compile(r"v=spf1(?: |\Z)", re.IGNORECASE)
_NAME = r"[A-Za-z][A-Za-z0-9_.\-]*"
_MODIFIER = re.compile(rf"({_NAME})=(.*)\Z", re.DOTALL)
_MECHANISM = re.compile(rf"([+\-~?]?)({_NAME})(.*)\Z", re.DOTALL)
_CIDR = r"(0|[1-9][0-9]{0,2})"
_DOMAIN_AND_CIDR = re.compile(rf"(?::(.+?))?(?:/{_CIDR})?(?://{_CIDR})?\Z", re.DOTALL)
_MACRO_TOKEN = re.compile(
    r"%\{(?P<letter>[A-Za-z])(?P<digits>[0-9]*)(?P<reverse>[rR]?)(?P<delims>[.\-+,/_=]*)\}"
    r"|%(?P<escape>[%_\-])"
    r"|(?P<literal>[\x21-\x24\x26-\x7e]+)"
    r"|(?P<space> +)"
)
_TOPLABEL = re.compile(r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9\-]*[A-Za-z0-9])\Z")
_LETTERS: Final = frozenset("slodiphv")
_EXP_LETTERS: Final = frozenset("slodiphvcrt")


@dataclass(frozen=True, slots=True)
class _Mechanism:
    qualifier: str
    name: str
    text: str
    domain: str | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(slots=True)
class _Record:
    mechanisms: list[_Mechanism] = field(default_factory=list)
    redirect: str | None = None
    exp: str | None = None


def _macro_tokens(text: str, explain: bool = False) -> list[re.Match[str]] | None:
    """Split a macro-string into tokens; None on a syntax error."""
    letters = _EXP_LETTERS if explain else _LETTERS
    tokens: list[re.Match[str]] = []
    pos = 0
    while pos < len(text):
        match = _MACRO_TOKEN.match(text, pos)
        if match is None or (match["space"] and not explain):
            return None
        letter, digits = match["letter"], match["digits"]
        if letter is not None and (letter.lower() not in letters or digits.startswith("0")):
            return None  # unknown letter, or a zero (or zero-padded) part count
        tokens.append(match)
        pos = match.end()
    return tokens


def _valid_domain_spec(spec: str) -> bool:
    """A domain-spec: a macro-string ending in a macro or in ``.toplabel[.]``."""
    body = spec[:-1] if spec.endswith(".") else spec
    tokens = _macro_tokens(body)
    if not tokens or _macro_tokens(spec) is None:
        return False
    if tokens[-1]["letter"] is not None:
        return True
    head, dot, last = body.rpartition(".")
    return bool(dot) and bool(head) and _TOPLABEL.match(last) is not None


def _cidr(text: str | None, limit: int) -> int | None:
    if text is None:
        return limit
    value = int(text)
    return value if value <= limit else None


def _parse_mechanism(qualifier: str, name: str, rest: str, text: str) -> _Mechanism | str:
    """Parse one directive's mechanism; a string is the syntax error."""
    if name == "all":
        return _Mechanism(qualifier, name, text) if not rest else f"invalid term {text!r}"
    if name in ("include", "exists", "ptr"):
        spec = rest[1:] if rest.startswith(":") else None
        if (spec is None and (rest or name != "ptr")) or (spec is not None and not _valid_domain_spec(spec)):
            return f"invalid term {text!r}"
        return _Mechanism(qualifier, name, text, spec)
    if name in ("a", "mx"):
        match = _DOMAIN_AND_CIDR.match(rest)
        if match is None or (match[1] is not None and not _valid_domain_spec(match[1])):
            return f"invalid term {text!r}"
        cidr4, cidr6 = _cidr(match[2], 32), _cidr(match[3], 128)
        if cidr4 is None or cidr6 is None:
            return f"invalid CIDR length in {text!r}"
        return _Mechanism(qualifier, name, text, match[1], None, cidr4, cidr6)
    if name in ("ip4", "ip6"):
        return _parse_network(qualifier, name, rest, text)
    return f"unknown mechanism {text!r}"


def _parse_network(qualifier: str, name: str, rest: str, text: str) -> _Mechanism | str:
    address, slash, length = rest[1:].partition("/")
    limit = 32 if name == "ip4" else 128
    if not rest.startswith(":") or (slash and re.fullmatch(_CIDR, length) is None):
        return f"invalid term {text!r}"
    cidr = _cidr(length if slash else None, limit)
    try:
        addr = ipaddress.IPv4Address(address) if name == "ip4" else ipaddress.IPv6Address(address)
        network = ipaddress.ip_network(f"{addr}/{cidr}", strict=False)
    except ValueError:
        return f"invalid address in {text!r}"
    if cidr is None or "%" in address:
        return f"invalid term {text!r}"
    return _Mechanism(qualifier, name, text, None, network)


def _parse_record(text: str) -> _Record | str:
    """Parse a whole SPF record; a string is the (first) syntax error."""
    record = _Record()
    for term in text[len("v=spf1") :].split(" "):
        if not term:
            continue
        modifier = _MODIFIER.match(term)
        if modifier is not None:
            name, value = modifier[1].lower(), modifier[2]
            if name in ("redirect", "exp"):
                if getattr(record, name) is not None or not _valid_domain_spec(value):
                    return f"invalid or repeated modifier {term!r}"
                setattr(record, name, value)
            elif _macro_tokens(value) is None:
                return f"invalid modifier {term!r}"
            continue
        mechanism = _MECHANISM.match(term)
        if mechanism is None:
            return f"invalid term {term!r}"
        parsed = _parse_mechanism(mechanism[1] or "+", mechanism[2].lower(), mechanism[3], term)
        if isinstance(parsed, str):
            return parsed
        record.mechanisms.append(parsed)
    return record


# -- evaluation --------------------------------------------------------------------


def _valid_domain(domain: str) -> bool:
    """RFC 7208 4.3: a multi-label name with labels of 1 to 63 octets."""
    labels = domain[:-1].split(".") if domain.endswith(".") else domain.split(".")
    return (
        len(domain) <= 253
        and len(labels) >= 2
        and all(0 < len(label) <= 63 and " " not in label for label in labels)
    )


@dataclass(slots=True)
class Context:
    """The state shared by one ``check_host()`` evaluation and its includes."""

    ip: _IP
    sender: str
    local: str
    sender_domain: str
    helo: str
    deadline: float
    resolver: DNSResolver
    dns_terms: int = 0
    voids: int = 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def count_term(self, term: str) -> _Verdict | None:
        """Count a DNS-querying term; a verdict once past the limit."""
        self.dns_terms += 1
        if self.dns_terms > _DNS_TERM_LIMIT:
            return "permerror", f"more than {_DNS_TERM_LIMIT} DNS-querying terms (at {term!r})"
        return None

    def count_void(self, name: str) -> _Verdict | None:
        self.voids += 1
        if self.voids > _VOID_LIMIT:
            return "permerror", f"more than {_VOID_LIMIT} void DNS lookups (at {name})"
        return None

    def start(self, name: str, rtype: str) -> Any:
        """Start a lookup bounded by the check's deadline."""
        return self.resolver.lookup(name, rtype, max(self.remaining(), 0.0))

    def answer(self, pending: Any) -> list[Any] | _Verdict | None:
        """Records of a started lookup; None when void; a temperror verdict on failure."""
        try:
            return list(pending.get() or ())
        except (DNSNotFoundError, DNSNoDataError):
            return None
        except DNSError as exc:
            return "temperror", str(exc)

    def query(self, name: str, rtype: str) -> list[Any] | _Verdict | None:
        if self.remaining() <= 0:
            return "temperror", "SPF check timed out"
        return self.answer(self.start(name, rtype))


def _ip_macro(ip: _IP) -> str:
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    return ".".join(ip.exploded.replace(":", ""))


def _expand(ctx: Context, spec: str, domain: str, explain: bool = False) -> str:
    """Expand a macro-string already checked by :func:`_macro_tokens`."""
    values = {
        "s": ctx.sender,
        "l": ctx.local,
        "o": ctx.sender_domain,
        "d": domain,
        "i": _ip_macro(ctx.ip),
        "p": "unknown",
        "h": ctx.helo,
        "v": "in-addr" if ctx.ip.version == 4 else "ip6",
        "c": str(ctx.ip),
        "r": "unknown",
        "t": str(int(time.time())),
    }
    out: list[str] = []
    for token in _macro_tokens(spec, explain) or ():
        if token["literal"] is not None or token["space"] is not None:
            out.append(token[0])
        elif token["escape"] is not None:
            out.append({"%": "%", "_": " ", "-": "%20"}[token["escape"]])
        else:
            out.append(_transform(token, values[token["letter"].lower()]))
    return "".join(out)


def _transform(token: re.Match[str], value: str) -> str:
    delims, digits, reverse = token["delims"], token["digits"], token["reverse"]
    if delims or digits or reverse:
        parts = re.split("[" + re.escape(delims or ".") + "]", value)
        if reverse:
            parts.reverse()
        if digits:
            parts = parts[-min(int(digits), len(parts)) :]
        value = ".".join(parts)
    if token["letter"].isupper():
        value = urllib.parse.quote(value, safe="")
    return value


def _target(ctx: Context, spec: str | None, domain: str) -> str:
    """Expand a domain-spec (default: the current domain), cut to 253 octets (7.3)."""
    if spec is None:
        return domain
    name = _expand(ctx, spec, domain).rstrip(".")
    while len(name) > 253 and "." in name:
        name = name.partition(".")[2]
    return name


def _fetch_record(ctx: Context, domain: str) -> str | _Verdict:
    """The one SPF record of ``domain``, or a verdict (none, permerror, temperror)."""
    if not _valid_domain(domain):
        return "none", f"{domain!r} is not a valid domain name"
    answers = ctx.query(domain, "TXT")
    if answers is None:
        return "none", f"{domain}: no SPF record"
    if isinstance(answers, tuple):
        return answers
    records = [rec.text for rec in answers if _VERSION.match(rec.text)]
    if not records:
        return "none", f"{domain}: no SPF record"
    if len(records) > 1:
        return "permerror", f"{domain}: more than one SPF record"
    return str(records[0])


def evaluate(ctx: Context, domain: str) -> _Verdict:
    """RFC 7208 ``check_host()`` of ``domain`` (section 4): the verdict."""
    text = _fetch_record(ctx, domain)
    if isinstance(text, tuple):
        return text
    record = _parse_record(text)
    if isinstance(record, str):
        return "permerror", f"{domain}: {record}"
    for mechanism in record.mechanisms:
        outcome = _matches(ctx, mechanism, domain)
        if isinstance(outcome, tuple):
            return outcome
        if outcome:
            result = _QUALIFIERS[mechanism.qualifier]
            reason = f"{domain}: {mechanism.text} matched {ctx.ip}"
            if result == "fail" and record.exp is not None:
                reason = _explain(ctx, record.exp, domain) or reason
            return result, reason
    if record.redirect is None:
        return "neutral", f"{domain}: no mechanism matched {ctx.ip}"
    over = ctx.count_term("redirect=" + record.redirect)
    if over is not None:
        return over
    target = _target(ctx, record.redirect, domain)
    result, reason = evaluate(ctx, target)
    if result == "none":
        return "permerror", f"redirect={target}: {reason}"
    return result, reason


def _matches(ctx: Context, mech: _Mechanism, domain: str) -> bool | _Verdict:
    """Whether a mechanism matches the client; a verdict ends the evaluation."""
    if mech.name == "all":
        return True
    if mech.network is not None:
        return mech.network.version == ctx.ip.version and ctx.ip in mech.network
    over = ctx.count_term(mech.text)
    if over is not None:
        return over
    target = _target(ctx, mech.domain, domain)
    if mech.name == "include":
        result, reason = evaluate(ctx, target)
        if result in ("temperror", "permerror"):
            return result, reason
        if result == "none":
            return "permerror", f"include:{target}: {reason}"
        return result == "pass"
    if mech.name == "exists":
        answers = ctx.query(target, "A")
        if answers is None:
            return ctx.count_void(target) or False
        return answers if isinstance(answers, tuple) else bool(answers)
    if mech.name == "ptr":
        return _ptr_matches(ctx, target)
    return _address_matches(ctx, mech, target)


def _in_cidr(ctx: Context, mech: _Mechanism, addresses: list[str]) -> bool:
    length = mech.cidr4 if ctx.ip.version == 4 else mech.cidr6
    for text in addresses:
        try:
            network = ipaddress.ip_network(f"{text}/{length}", strict=False)
        except ValueError:
            continue
        if network.version == ctx.ip.version and ctx.ip in network:
            return True
    return False


def _address_matches(ctx: Context, mech: _Mechanism, target: str) -> bool | _Verdict:
    """The ``a`` and ``mx`` mechanisms."""
    rtype = "A" if ctx.ip.version == 4 else "AAAA"
    if mech.name == "a":
        answers = ctx.query(target, rtype)
        if answers is None:
            return ctx.count_void(target) or False
        return answers if isinstance(answers, tuple) else _in_cidr(ctx, mech, [r.host for r in answers])
    exchanges = ctx.query(target, "MX")
    if exchanges is None:
        return ctx.count_void(target) or False
    if isinstance(exchanges, tuple):
        return exchanges
    hosts = [rec.host for rec in exchanges if rec.host not in ("", ".")]
    if len(hosts) > _MX_LIMIT:
        return "permerror", f"{target}: more than {_MX_LIMIT} MX records"
    # Ask for every exchange's addresses at once: one round trip, not ten.
    pending = [ctx.start(host, rtype) for host in hosts]
    failure: _Verdict | None = None
    for result in pending:
        answers = ctx.answer(result)
        if isinstance(answers, tuple):
            failure = failure or answers
        elif answers and _in_cidr(ctx, mech, [r.host for r in answers]):
            return True
    return failure or False


def _ptr_matches(ctx: Context, target: str) -> bool | _Verdict:
    """The ``ptr`` mechanism (5.5); DNS errors make it not match."""
    names = ctx.query(ctx.ip.reverse_pointer, "PTR")
    if names is None:
        return ctx.count_void(ctx.ip.reverse_pointer) or False
    if isinstance(names, tuple):
        return False
    rtype = "A" if ctx.ip.version == 4 else "AAAA"
    pending = [(rec.name, ctx.start(rec.name, rtype)) for rec in names[:_PTR_LIMIT]]
    suffix = "." + target.lower()
    for name, result in pending:
        answers = ctx.answer(result)
        if not isinstance(answers, list) or not any(_same_ip(r.host, ctx.ip) for r in answers):
            continue
        if name.lower() == target.lower() or name.lower().endswith(suffix):
            return True
    return False


def _same_ip(text: str, ip: _IP) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False


def _explain(ctx: Context, spec: str, domain: str) -> str | None:
    """The ``exp=`` explanation of a fail (6.2); None when it cannot be had."""
    answers = ctx.query(_target(ctx, spec, domain), "TXT")
    if not isinstance(answers, list) or len(answers) != 1:
        return None
    text = answers[0].text
    if _macro_tokens(text, explain=True) is None:
        return None
    return _expand(ctx, text, domain, explain=True)


def clean(reason: str) -> str:
    """Keep a reason safe and short for an SMTP reply and a log line."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", reason)
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."
