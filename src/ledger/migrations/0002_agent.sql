-- vmledger ledger schema, migration 2: the appliance agent's unsigned stores beside the
-- signed entries. Shipped: never edit; add a new migration instead.

-- Receipts the licensing service signed, stored whole exactly as received. A `checkin`
-- ledger entry cites its receipt by `hash` (lowercase hex SHA-256 of the receipt's signed
-- message, `Receipt::hash`).
CREATE TABLE receipts (
    hash        TEXT PRIMARY KEY,
    server_time TEXT NOT NULL,
    receipt     TEXT NOT NULL
) STRICT;

-- Air-gapped check-in requests written by `checkin --request-file` and not yet answered.
-- A response file is accepted only for a nonce listed here, and only once.
CREATE TABLE pending_requests (
    nonce      TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL
) STRICT;

-- Unsigned agent bookkeeping that never affects verification (e.g. whether a clock
-- anomaly episode seen against trusted time has already been recorded).
CREATE TABLE agent_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
