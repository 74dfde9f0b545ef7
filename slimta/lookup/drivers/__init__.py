"""The lookup driver interface, :class:`LookupBase`, and its error.

A driver turns keyword arguments into a record: usually a mapping of field
names to values, or ``None`` when the backend has nothing for them.  Most
drivers build the backend key from a template such as ``"alias:{domain}"``
with :meth:`LookupBase._format_key`; fields the template names but the
caller did not give are left in the key as written (``{domain}``), so a
lookup with missing arguments looks for a key nobody stored instead of
failing.

Drivers never change their backend.  A backend that cannot answer (Redis
down, an SQL error, a record that is not valid JSON) raises
:class:`LookupBackendError`, so a validator can turn every driver's failure
into one temporary SMTP reply.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slimta.core import SlimtaError
from slimta.logging import logline

__all__ = ["LookupBackendError", "LookupBase", "fill_template", "template_fields"]

# One pass over the template: "{{" and "}}" are literal braces, "{name}" a
# field.  Anything else inside braces (attribute or index access, format
# specs) is left alone, so a template can never reach into an argument's
# attributes.
_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


class LookupBackendError(SlimtaError):
    """The backend of a lookup failed to answer; the cause is chained.

    .. versionadded:: 0.1.0
    """


def fill_template(template: str, fields: dict[str, Any]) -> str:
    """Replace ``{name}`` in ``template`` with ``str(fields[name])``.

    ``{{`` and ``}}`` give literal braces; a field not in ``fields`` is kept
    as written.  Values are inserted once and never re-scanned, so a value
    that itself contains ``{domain}`` stays as it is.

    Args:
        template: The template, e.g. ``"{localpart}@{domain}"``.
        fields: The values to insert.

    Returns:
        The filled-in string.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        if name in fields:
            return str(fields[name])
        return match.group(0)

    return _FIELD.sub(replace, template)


def template_fields(template: str) -> set[str]:
    """The field names ``template`` refers to (``{{``/``}}`` escapes excluded)."""
    return {match.group(1) for match in _FIELD.finditer(template) if match.group(1) is not None}


class LookupBase:
    """Base class of lookup drivers; a driver overrides :meth:`lookup`."""

    def _format_key(self, key_template: str, kwargs: dict[str, Any]) -> str:
        """Build a backend key from ``key_template`` and the lookup arguments."""
        return fill_template(key_template, kwargs)

    def lookup(self, **kwargs: Any) -> Any:
        """Find the record for the given keyword arguments.

        Key-value drivers fill their key template with the arguments; SQL
        drivers pass them to the query as parameters.

        Args:
            **kwargs: The fields to look up by.

        Returns:
            The record (usually a mapping) if there is one, else ``None``.

        Raises:
            LookupBackendError: The backend could not be asked.
            NotImplementedError: The subclass did not override this method.
        """
        raise NotImplementedError

    def lookup_address(self, address: str, **extra: Any) -> Any:
        """Look up an e-mail address, also passing its parts.

        Calls :meth:`lookup` with ``address=address`` and, when the address
        contains ``@``, ``localpart=`` (everything before the last ``@``)
        and ``domain=`` (everything after it).

        .. versionchanged:: 0.1.0
           ``localpart`` is passed as well as ``domain``.

        Args:
            address: The address, or a bare domain.
            **extra: More keyword arguments for :meth:`lookup`.

        Returns:
            What :meth:`lookup` returns.
        """
        if "@" in address:
            localpart, domain = address.rsplit("@", 1)
            return self.lookup(address=address, localpart=localpart, domain=domain, **extra)
        return self.lookup(address=address, **extra)

    def log(self, name: str, kwargs: dict[str, Any], ret: Any) -> None:
        """Log one lookup (at ``DEBUG``) as ``lookup:<id>:found|notfound``.

        Args:
            name: The logger name, normally the driver's ``__name__``.
            kwargs: The arguments given to :meth:`lookup`.
            ret: What the lookup returned.
        """
        logger = logging.getLogger(name)
        if logger.isEnabledFor(logging.DEBUG):
            logline(logger.debug, "lookup", id(self), "notfound" if ret is None else "found", **kwargs)
