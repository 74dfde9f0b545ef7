"""Lookups in an SQL database through any DB-API 2.0 (PEP 249) driver.

Most DB-API drivers are blocking C code: a query run on the gevent hub
would stop every other session until the database answers.  So by default
the query itself -- ``cursor()``, ``execute()``, ``fetchone()``,
``rollback()`` -- runs in gevent's thread pool, while the connection
context manager is entered and left in the calling greenlet (so a
connection pool built on gevent primitives works unchanged).  A driver that
is already cooperative (one that talks through gevent sockets) can pass
``threadpool=False``.

:class:`SQLite3Lookup` is the ready-made case for a local SQLite file.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import gevent
from gevent.lock import Semaphore

from slimta.lookup.drivers import LookupBackendError, LookupBase

__all__ = ["DBAPI2Lookup", "SQLite3Lookup"]


class DBAPI2Lookup(LookupBase):
    """Look records up with one ``SELECT`` over a DB-API 2.0 connection.

    The lookup's keyword arguments are the query parameters: passed as a
    mapping for named or pyformat placeholders (``:address``,
    ``%(address)s``), or in the order of ``query_param_order`` for
    positional ones (``?``, ``%s``).  The first row is the record, as a
    ``dict`` of column name to value; no row gives ``None``.

    Args:
        conn_ctxmgr: A callable returning a context manager that yields an
            open connection (and returns it to its pool, or closes it,
            afterwards).  It must not yield a connection that another
            lookup is using at the same time.  ``None`` uses ``conn``.
        query: The ``SELECT`` statement.
        query_param_order: For positional placeholders: the lookup argument
            names, in placeholder order.
        result_order: Column names for the row's values.  Needed only for a
            driver whose rows are neither mappings nor carry ``keys()``
            and whose cursor has no ``description``.
        conn: One connection shared by every lookup, when ``conn_ctxmgr``
            is ``None``; lookups through it take turns.
        threadpool: Run the query in gevent's thread pool (the default);
            ``False`` runs it in the calling greenlet, for a driver that is
            cooperative under gevent.

            .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        conn_ctxmgr: Callable[[], AbstractContextManager[Any]] | None,
        query: str,
        query_param_order: Sequence[str] | None = None,
        result_order: Sequence[str] | None = None,
        conn: Any = None,
        *,
        threadpool: bool = True,
    ) -> None:
        self.query = query
        self.query_param_order = query_param_order
        self.result_order = result_order
        self.conn = conn
        self.threadpool = threadpool
        if conn_ctxmgr is None:
            if conn is None:
                raise ValueError("give conn_ctxmgr or conn")
            # A DB-API connection is rarely safe for two queries at once.
            self._shared_lock: Semaphore | None = Semaphore()
            self.conn_ctxmgr: Callable[[], AbstractContextManager[Any]] = self._shared_conn
        else:
            self._shared_lock = None
            self.conn_ctxmgr = conn_ctxmgr

    @contextlib.contextmanager
    def _shared_conn(self) -> Iterator[Any]:
        assert self._shared_lock is not None
        with self._shared_lock:
            yield self.conn

    def _params(self, kwargs: dict[str, Any]) -> Any:
        if self.query_param_order is None:
            return kwargs
        return [kwargs[name] for name in self.query_param_order]

    def _row_to_record(self, cursor: Any, row: Any) -> dict[str, Any]:
        if isinstance(row, Mapping):
            return dict(row)
        keys = getattr(row, "keys", None)
        if callable(keys):
            names: Sequence[str] = list(keys())
        elif self.result_order is not None:
            names = self.result_order
        elif cursor.description:
            names = [column[0] for column in cursor.description]
        else:
            raise LookupBackendError("cannot name the columns of a row: give result_order")
        return dict(zip(names, row, strict=False))

    def _run_query(self, conn: Any, params: Any) -> dict[str, Any] | None:
        """Execute the query on ``conn`` and return the first row as a record."""
        cursor = conn.cursor()
        try:
            cursor.execute(self.query, params)
            row = cursor.fetchone()
            return None if row is None else self._row_to_record(cursor, row)
        finally:
            # End the read transaction the query opened, so the next lookup
            # sees current data and no lock is held between lookups.
            conn.rollback()
            cursor.close()

    def _do_lookup(self, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        params = self._params(kwargs)
        with self.conn_ctxmgr() as conn:
            if conn is None:
                raise LookupBackendError("the connection context manager gave no connection")
            if not self.threadpool:
                return self._run_query(conn, params)
            result: dict[str, Any] | None = gevent.get_hub().threadpool.apply(self._run_query, (conn, params))
            return result

    def lookup(self, **kwargs: Any) -> Any:
        """Run the query with ``kwargs`` and return the first row, or ``None``.

        Raises:
            LookupBackendError: The query failed (the driver's error is
                chained), or a parameter named in ``query_param_order`` was
                not given.
        """
        try:
            ret = self._do_lookup(kwargs)
        except LookupBackendError:
            raise
        except KeyError as exc:
            raise LookupBackendError(f"missing lookup argument {exc}") from exc
        except Exception as exc:
            # DB-API drivers share no base error class: wrap whatever they raise.
            raise LookupBackendError(f"database lookup failed: {exc}") from exc
        self.log(__name__, kwargs, ret)
        return ret


class SQLite3Lookup(DBAPI2Lookup):
    """A :class:`DBAPI2Lookup` on one SQLite database, opened now and kept open.

    Queries run in gevent's thread pool, one at a time.

    Args:
        database: The file name (or URI) given to :func:`sqlite3.connect`.
        query: The ``SELECT``, with named placeholders (``name = :name``).
    """

    def __init__(self, database: str, query: str) -> None:
        # The connection is used from the pool's threads, one query at a
        # time (the base class serialises the shared connection).
        conn = sqlite3.connect(database, check_same_thread=False)
        super().__init__(None, query, conn=conn)

    def close(self) -> None:
        """Close the database connection.

        .. versionadded:: 0.1.0
        """
        self.conn.close()
