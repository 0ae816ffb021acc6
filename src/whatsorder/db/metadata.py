"""The schema's one ``MetaData`` and its key type, shared by the modules that define tables."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, MetaData

# Constraint names are fixed so that migrations name the same things on SQLite and PostgreSQL.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER keys only
