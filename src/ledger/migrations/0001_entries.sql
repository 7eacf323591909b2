-- vmledger ledger schema, migration 1. Shipped: never edit; add a new migration instead.
-- One row per signed entry. `body` is the entry body's RFC 8785 canonical JSON text; `seq`,
-- `hash`, `prev` and `kind` repeat fields of the body for lookups and are checked against it
-- by `ledger verify`.
CREATE TABLE entries (
    seq  INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    prev TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    sig  TEXT NOT NULL
) STRICT;

CREATE INDEX entries_by_kind ON entries (kind, seq);

CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
BEGIN
    SELECT RAISE(ABORT, 'vmledger ledger entries are append-only: UPDATE refused');
END;

CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
BEGIN
    SELECT RAISE(ABORT, 'vmledger ledger entries are append-only: DELETE refused');
END;

-- Unsigned bookkeeping that never affects verification (e.g. whether a clock anomaly
-- episode has already been recorded).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
