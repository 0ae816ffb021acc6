"""The SQL store (SQLite, PostgreSQL): its table, its engine, its steps and its failures.

``schema`` holds the table and the mapping of rows to records, ``database`` the engine factory,
``transaction`` the steps on one connection, ``store`` the store, ``errors`` what the database's
failures mean to the engine.
"""

from whatsorder_idempotency.stores.sql.database import AUTOCOMMIT_OPTION, async_url, sql_engine
from whatsorder_idempotency.stores.sql.errors import sqlstate
from whatsorder_idempotency.stores.sql.schema import DEFAULT_TABLE_NAME, idempotency_table
from whatsorder_idempotency.stores.sql.store import SqlStore
from whatsorder_idempotency.stores.sql.transaction import SqlTransaction

__all__ = [
    "AUTOCOMMIT_OPTION",
    "DEFAULT_TABLE_NAME",
    "SqlStore",
    "SqlTransaction",
    "async_url",
    "idempotency_table",
    "sql_engine",
    "sqlstate",
]
