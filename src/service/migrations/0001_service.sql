-- vmledger licensing service schema, migration 1. Shipped: never edit; add a new migration.

-- The service's signing keys. The private key lives in a file beside the database
-- (`<db>.key`); the table pins which public key that file must hold.
CREATE TABLE service_keys (
    key_id     TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    created_at TEXT NOT NULL,
    active     INTEGER NOT NULL
) STRICT;

-- SLA records. `state` is the serial-level rules state (JSON).
CREATE TABLE serials (
    serial          TEXT PRIMARY KEY,
    activation_code TEXT NOT NULL,
    ends            TEXT NOT NULL,
    contact         TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    state           TEXT NOT NULL
) STRICT;

-- Instances, their pinned key and their rules state (JSON).
CREATE TABLE instances (
    instance        TEXT PRIMARY KEY,
    serial          TEXT NOT NULL REFERENCES serials (serial),
    public_key      TEXT NOT NULL,
    activation      TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    activated_at    TEXT,
    last_checkin_at TEXT,
    state           TEXT NOT NULL
) STRICT;
CREATE INDEX instances_by_serial ON instances (serial, activated_at);

-- Every entry ever received, with its branch and arrival time. Clustered by instance and
-- seq, so that a check-in's new entries land on the instance's last page (two entries of
-- one instance share a seq only at a fork; the hash tells them apart).
CREATE TABLE entries (
    instance   TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    prev       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    at         TEXT NOT NULL,
    boot_id    TEXT NOT NULL,
    branch     INTEGER NOT NULL,
    arrived_at TEXT NOT NULL,
    body       TEXT NOT NULL,
    sig        TEXT NOT NULL,
    PRIMARY KEY (instance, seq, hash)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
BEGIN
    SELECT RAISE(ABORT, 'vmledger service entries are append-only: UPDATE refused');
END;
CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
BEGIN
    SELECT RAISE(ABORT, 'vmledger service entries are append-only: DELETE refused');
END;

-- Nonces seen per instance (replay protection), pruned after a retention period (by a
-- daily scan: no time index to maintain on every check-in).
CREATE TABLE nonces (
    instance TEXT NOT NULL,
    nonce    TEXT NOT NULL,
    seen_at  TEXT NOT NULL,
    PRIMARY KEY (instance, nonce)
) STRICT, WITHOUT ROWID;

-- Verdicts and restores with their evidence (JSON).
CREATE TABLE verdicts (
    id         TEXT PRIMARY KEY,
    serial     TEXT NOT NULL,
    instance   TEXT NOT NULL,
    kind       TEXT NOT NULL,
    rule       TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    review     INTEGER NOT NULL,
    evidence   TEXT NOT NULL
) STRICT;
CREATE INDEX verdicts_by_serial ON verdicts (serial, decided_at);

CREATE TRIGGER verdicts_no_update BEFORE UPDATE ON verdicts
BEGIN
    SELECT RAISE(ABORT, 'vmledger verdicts are append-only: UPDATE refused');
END;
CREATE TRIGGER verdicts_no_delete BEFORE DELETE ON verdicts
BEGIN
    SELECT RAISE(ABORT, 'vmledger verdicts are append-only: DELETE refused');
END;

-- Every operator override, recorded before it takes effect.
CREATE TABLE overrides (
    id       INTEGER PRIMARY KEY,
    at       TEXT NOT NULL,
    kind     TEXT NOT NULL,
    serial   TEXT NOT NULL,
    instance TEXT,
    detail   TEXT NOT NULL,
    reason   TEXT NOT NULL,
    operator TEXT NOT NULL
) STRICT;
CREATE INDEX overrides_by_serial ON overrides (serial, id);

CREATE TRIGGER overrides_no_update BEFORE UPDATE ON overrides
BEGIN
    SELECT RAISE(ABORT, 'vmledger overrides are append-only: UPDATE refused');
END;
CREATE TRIGGER overrides_no_delete BEFORE DELETE ON overrides
BEGIN
    SELECT RAISE(ABORT, 'vmledger overrides are append-only: DELETE refused');
END;

-- SLA alerts sent (each once per serial, SLA end and stage).
CREATE TABLE alerts (
    serial  TEXT NOT NULL,
    ends    TEXT NOT NULL,
    stage   TEXT NOT NULL,
    sent_to TEXT NOT NULL,
    sent_at TEXT NOT NULL,
    PRIMARY KEY (serial, ends, stage)
) STRICT;
