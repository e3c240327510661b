-- swapbot's shared state. Every replica of the bot reads and writes these tables; nothing here
-- is kept only in one replica's memory.

-- Session ids per backend id map. `map` is the backend's id map name as the file store names it
-- (`user_threads.json`, `user_conversations.json`); group sessions share their backend's map and
-- differ by key. `session_key` is the stable text form: `private:<user>`, `group:<chat>:<user>`
-- or `group:<chat>`.
CREATE TABLE session_ids (
    map         TEXT        NOT NULL,
    session_key TEXT        NOT NULL,
    session_id  TEXT        NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (map, session_key)
);
-- `remove_session` forgets a key in every map at once.
CREATE INDEX session_ids_by_key ON session_ids (session_key);

-- Recent messages per session, oldest first by (exchange, pos). An exchange (a question and its
-- answer) takes one number from a global sequence for both its rows, so concurrent appends never
-- interleave one exchange's messages with another's nor collide on a per-session counter.
-- Trimmed to the last 100 messages per session on every append.
CREATE SEQUENCE history_exchange_seq;
CREATE TABLE history (
    session_key TEXT     NOT NULL,
    exchange    BIGINT   NOT NULL,
    pos         SMALLINT NOT NULL,
    role        TEXT     NOT NULL CHECK (role IN ('user', 'assistant')),
    text        TEXT     NOT NULL,
    PRIMARY KEY (session_key, exchange, pos)
);

-- One row per billed turn (the file store's usage.jsonl line). `import_key` is set only for
-- rows copied from a usage.jsonl, so importing the same file twice adds nothing.
CREATE TABLE usage (
    id           BIGSERIAL PRIMARY KEY,
    t_unix_ms    BIGINT NOT NULL,
    user_id      BIGINT NOT NULL,
    backend      TEXT   NOT NULL,
    model        TEXT   NOT NULL,
    input        BIGINT NOT NULL,
    cached_input BIGINT NOT NULL,
    output       BIGINT NOT NULL,
    reasoning    BIGINT NOT NULL,
    embedding    BIGINT NOT NULL,
    micro_usd    BIGINT NOT NULL,
    import_key   TEXT UNIQUE
);
CREATE INDEX usage_by_time ON usage (t_unix_ms);
CREATE INDEX usage_by_user_time ON usage (user_id, t_unix_ms);

-- The rollout file's JSON (at most one row).
CREATE TABLE rollout (
    singleton  BOOLEAN     PRIMARY KEY DEFAULT true CHECK (singleton),
    value      JSONB       NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Update ids that were answered (or claimed to be answered): an update delivered twice, or to
-- two replicas, is answered once.
CREATE TABLE processed_updates (
    update_id  BIGINT      PRIMARY KEY,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Webhook mode's durable inbox. A replica takes rows with a lease; if it dies mid-turn the
-- lease runs out and another replica takes the row.
CREATE TABLE inbox (
    update_id   BIGINT      PRIMARY KEY,
    body        JSONB       NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_by  TEXT,
    lease_until TIMESTAMPTZ,
    attempts    INTEGER     NOT NULL DEFAULT 0
);
CREATE INDEX inbox_by_lease ON inbox (lease_until NULLS FIRST, update_id);

-- What each replica serves, so `/rollout` can show one that runs another plugin build.
CREATE TABLE replicas (
    replica_id   TEXT        PRIMARY KEY,
    plugins      JSONB       NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
