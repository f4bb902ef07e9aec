-- The callguard database schema, version 4, for PostgreSQL and SQLite alike.
--
-- callguard creates this schema by itself in an empty database. Use this file
-- to create it by hand instead, e.g. when the daemon's database user may not
-- create tables:
--   psql -v ON_ERROR_STOP=1 -1 -d callguard -f schema.sql
--   sqlite3 /var/lib/callguard/callguard.db < schema.sql
--
-- The daemon upgrades a database of version 1, 2 or 3 by itself. By hand, run
-- the statements below for the database's version, then the last one:
--   from version 1:
--     ALTER TABLE blocks ADD COLUMN renewed_at TIMESTAMP WITH TIME ZONE;
--     ALTER TABLE blocks ADD COLUMN renewed_by TEXT;
--     ALTER TABLE blocks ADD COLUMN first_reason TEXT;
--     (the CREATE TABLE live_spend statement of this file)
--   from version 2:
--     (the CREATE TABLE live_spend statement of this file)
--   from version 3:
--     ALTER TABLE live_spend ADD COLUMN calls INTEGER;
--   in every case:
--     UPDATE schema_version SET version = 4;
--
-- Money columns (rate, connection_fee, reserved, cost, amount, live, held,
-- daily_spend, weekly_spend, call_cost) are BIGINT micro-units: 1.50 is stored as 1500000.
-- Timestamps are UTC; SQLite stores them as text 'YYYY-MM-DD HH:MM:SS.ffffff'.
-- Increments are seconds.
-- Ids of decisions, calls, blocks, hangups, outbox and audit come from
-- id_counters, because the two databases share no syntax for generated keys. A
-- row inserted by hand must take its id from there too.

CREATE TABLE schema_version (
    version INTEGER NOT NULL,
    CONSTRAINT pk_schema_version PRIMARY KEY (version)
);

CREATE TABLE id_counters (
    name TEXT NOT NULL,
    last_id BIGINT NOT NULL,
    CONSTRAINT pk_id_counters PRIMARY KEY (name)
);

-- Prefix table: longest prefix of a dialled number -> number category.
CREATE TABLE prefixes (
    prefix TEXT NOT NULL,
    category TEXT NOT NULL,
    description TEXT NOT NULL,
    CONSTRAINT pk_prefixes PRIMARY KEY (prefix)
);

-- Rate decks, one per trunk; rate is per minute, kept as exact decimal text.
CREATE TABLE rates (
    trunk TEXT NOT NULL,
    prefix TEXT NOT NULL,
    description TEXT NOT NULL,
    rate TEXT NOT NULL,
    connection_fee BIGINT NOT NULL,
    first_increment INTEGER NOT NULL,
    later_increment INTEGER NOT NULL,
    CONSTRAINT pk_rates PRIMARY KEY (trunk, prefix),
    CONSTRAINT ck_rates_connection_fee_not_negative CHECK (connection_fee >= 0),
    CONSTRAINT ck_rates_first_increment_positive CHECK (first_increment > 0),
    CONSTRAINT ck_rates_later_increment_positive CHECK (later_increment > 0)
);

-- The last import of the prefix table (trunk '') and of each rate deck.
CREATE TABLE imports (
    dataset TEXT NOT NULL,
    trunk TEXT NOT NULL,
    source TEXT NOT NULL,
    row_count INTEGER NOT NULL,
    imported_at TIMESTAMP WITH TIME ZONE NOT NULL,
    CONSTRAINT pk_imports PRIMARY KEY (dataset, trunk)
);

-- Audit trail: every result of the FastAGI check.
CREATE TABLE decisions (
    id BIGINT NOT NULL,
    decided_at TIMESTAMP WITH TIME ZONE NOT NULL,
    trunk TEXT NOT NULL,
    uniqueid TEXT NOT NULL,
    channel TEXT NOT NULL,
    caller TEXT NOT NULL,
    dialled TEXT NOT NULL,
    e164 TEXT,
    category TEXT,
    result TEXT NOT NULL,
    reason TEXT NOT NULL,
    max_seconds INTEGER,
    rate TEXT,
    reserved BIGINT NOT NULL,
    node TEXT NOT NULL,
    CONSTRAINT pk_decisions PRIMARY KEY (id),
    CONSTRAINT ck_decisions_result CHECK (result IN ('ALLOW', 'DENY')),
    CONSTRAINT ck_decisions_max_seconds_not_negative CHECK (max_seconds >= 0)
);
CREATE INDEX ix_decisions_decided_at ON decisions (decided_at);
CREATE INDEX ix_decisions_trunk_decided_at ON decisions (trunk, decided_at);
CREATE INDEX ix_decisions_uniqueid ON decisions (uniqueid);

-- Calls on guarded trunks, keyed by the uniqueid of the trunk leg. The tariff
-- columns are a snapshot of the rate deck row that priced the call.
CREATE TABLE calls (
    id BIGINT NOT NULL,
    uniqueid TEXT NOT NULL,
    decision_uniqueid TEXT,
    trunk TEXT NOT NULL,
    channel TEXT NOT NULL,
    caller TEXT NOT NULL,
    dialled TEXT NOT NULL,
    e164 TEXT,
    category TEXT,
    tariff_prefix TEXT,
    rate TEXT,
    connection_fee BIGINT,
    first_increment INTEGER,
    later_increment INTEGER,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    answered_at TIMESTAMP WITH TIME ZONE,
    ended_at TIMESTAMP WITH TIME ZONE,
    state TEXT NOT NULL,
    cost BIGINT NOT NULL,
    hangup_cause INTEGER,
    hangup_reason TEXT,
    guarded BOOLEAN NOT NULL,
    CONSTRAINT pk_calls PRIMARY KEY (id),
    CONSTRAINT uq_calls_uniqueid UNIQUE (uniqueid),
    CONSTRAINT ck_calls_state CHECK (state IN ('ringing', 'up', 'ended'))
);
CREATE INDEX ix_calls_state ON calls (state);
CREATE INDEX ix_calls_created_at ON calls (created_at);
CREATE INDEX ix_calls_decision_uniqueid ON calls (decision_uniqueid);

-- Spend per trunk per day ('2024-06-14') or ISO week ('2024-W24'). Each
-- window has its own key, so a new window starts empty without a reset job.
CREATE TABLE spend (
    trunk TEXT NOT NULL,
    "window" TEXT NOT NULL,
    window_key TEXT NOT NULL,
    amount BIGINT NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    CONSTRAINT pk_spend PRIMARY KEY (trunk, "window", window_key),
    CONSTRAINT ck_spend_window CHECK ("window" IN ('day', 'week'))
);

-- Spend that each node sharing the store has not added to spend yet: the
-- blocks its calls still up have begun, the ended calls it has still to store
-- (live), and the first blocks its pending checks hold (held). The row of the
-- current day also carries the node's calls up plus its pending checks on the
-- trunk (calls), which is NULL in rows of a release before version 4. Each node
-- replaces its own rows every few seconds; the others ignore rows whose
-- updated_at is too old, as those of a node that crashed. Rows not updated for
-- a day are deleted.
CREATE TABLE live_spend (
    node TEXT NOT NULL,
    trunk TEXT NOT NULL,
    "window" TEXT NOT NULL,
    window_key TEXT NOT NULL,
    live BIGINT NOT NULL,
    held BIGINT NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    calls INTEGER,
    CONSTRAINT pk_live_spend PRIMARY KEY (node, trunk, "window", window_key),
    CONSTRAINT ck_live_spend_window CHECK ("window" IN ('day', 'week'))
);

-- Blocks; expires_at NULL means permanent, lifted_at set means lifted. A
-- renewal replaces reason and expires_at and sets renewed_at and renewed_by,
-- and first_reason keeps the reason given at created_at.
CREATE TABLE blocks (
    id BIGINT NOT NULL,
    key_type TEXT NOT NULL,
    "key" TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    expires_at TIMESTAMP WITH TIME ZONE,
    created_by TEXT NOT NULL,
    lifted_at TIMESTAMP WITH TIME ZONE,
    lifted_reason TEXT,
    renewed_at TIMESTAMP WITH TIME ZONE,
    renewed_by TEXT,
    first_reason TEXT,
    CONSTRAINT pk_blocks PRIMARY KEY (id)
);
CREATE INDEX ix_blocks_key_type_key ON blocks (key_type, "key");

-- Hang-ups that callguard requested on trunk legs. outcome 'gone' means
-- Asterisk answered 404 because the channel had already hung up. The spend
-- columns are the trunk's totals at that moment, NULL when no limit was known.
CREATE TABLE hangups (
    id BIGINT NOT NULL,
    requested_at TIMESTAMP WITH TIME ZONE NOT NULL,
    trunk TEXT NOT NULL,
    uniqueid TEXT NOT NULL,
    channel TEXT NOT NULL,
    number TEXT NOT NULL,
    reason TEXT NOT NULL,
    daily_spend BIGINT,
    weekly_spend BIGINT,
    call_cost BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    CONSTRAINT pk_hangups PRIMARY KEY (id),
    CONSTRAINT ck_hangups_outcome CHECK (outcome IN ('requested', 'gone', 'failed'))
);
CREATE INDEX ix_hangups_trunk_requested_at ON hangups (trunk, requested_at);

-- Alerts to deliver, one row per transport (e-mail or webhook). Rows of one
-- alert share dedupe_key, so an alert raised again is not queued again. data
-- is a JSON object; recipients and pending_recipients are comma-separated
-- addresses. next_attempt_at is NULL once a row is sent or failed.
CREATE TABLE outbox (
    id BIGINT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    kind TEXT NOT NULL,
    trunk TEXT,
    transport TEXT NOT NULL,
    dedupe_key TEXT,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    data TEXT NOT NULL,
    recipients TEXT NOT NULL,
    pending_recipients TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TIMESTAMP WITH TIME ZONE,
    last_attempt_at TIMESTAMP WITH TIME ZONE,
    sent_at TIMESTAMP WITH TIME ZONE,
    reply TEXT,
    last_error TEXT,
    refused TEXT,
    CONSTRAINT pk_outbox PRIMARY KEY (id),
    CONSTRAINT uq_outbox_dedupe_key_transport UNIQUE (dedupe_key, transport),
    CONSTRAINT ck_outbox_transport CHECK (transport IN ('email', 'webhook')),
    CONSTRAINT ck_outbox_state CHECK (state IN ('pending', 'sent', 'failed')),
    CONSTRAINT ck_outbox_attempts_not_negative CHECK (attempts >= 0)
);
CREATE INDEX ix_outbox_state_next_attempt_at ON outbox (state, next_attempt_at);
CREATE INDEX ix_outbox_created_at ON outbox (created_at);

-- Operator changes (manual blocks, unblocks, spend resets) and config reloads,
-- each with who made it and why. Decisions, automatic blocks and hang-ups are
-- read from their own tables.
CREATE TABLE audit (
    id BIGINT NOT NULL,
    at TIMESTAMP WITH TIME ZONE NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    CONSTRAINT pk_audit PRIMARY KEY (id),
    CONSTRAINT ck_audit_action CHECK (action IN ('block', 'unblock', 'reset', 'reload'))
);
CREATE INDEX ix_audit_at ON audit (at);

INSERT INTO schema_version (version) VALUES (4);
INSERT INTO id_counters (name, last_id) VALUES ('decisions', 0);
INSERT INTO id_counters (name, last_id) VALUES ('calls', 0);
INSERT INTO id_counters (name, last_id) VALUES ('blocks', 0);
INSERT INTO id_counters (name, last_id) VALUES ('hangups', 0);
INSERT INTO id_counters (name, last_id) VALUES ('outbox', 0);
INSERT INTO id_counters (name, last_id) VALUES ('audit', 0);
