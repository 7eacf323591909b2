-- vmledger licensing service schema, migration 2: service key rotation. Shipped: never
-- edit; add a new migration.

-- Each key's place in a rotation (`vmledger service key rotate|activate|retire`):
--   announced  created by `rotate`; receipts announce it, it signs nothing yet (at most one);
--   active     signs receipts (exactly one);
--   previous   a former active key: still signs the receipts of appliances that trust it
--              and no newer key, announcing the active key to them;
--   retired    never signs again (end of the transition, or a compromise). Final.
-- The private key of each lives in a file beside the database (`<db>.key` for the key
-- `service init` created, `<db>.<key_id>.key` for later ones). Migration 1's `active`
-- column stays equal to (state = 'active').
ALTER TABLE service_keys ADD COLUMN state TEXT NOT NULL DEFAULT 'retired'
    CHECK (state IN ('announced', 'active', 'previous', 'retired'));
ALTER TABLE service_keys ADD COLUMN activated_at TEXT;
ALTER TABLE service_keys ADD COLUMN retired_at TEXT;
UPDATE service_keys SET state = 'active', activated_at = created_at WHERE active = 1;

CREATE UNIQUE INDEX service_keys_one_active ON service_keys (state) WHERE state = 'active';
CREATE UNIQUE INDEX service_keys_one_announced ON service_keys (state) WHERE state = 'announced';

CREATE TRIGGER service_keys_retired_is_final BEFORE UPDATE ON service_keys
WHEN OLD.state = 'retired'
BEGIN
    SELECT RAISE(ABORT, 'a retired service key never signs again: UPDATE refused');
END;
CREATE TRIGGER service_keys_no_delete BEFORE DELETE ON service_keys
BEGIN
    SELECT RAISE(ABORT, 'service keys are kept for verifying old receipts: DELETE refused');
END;
