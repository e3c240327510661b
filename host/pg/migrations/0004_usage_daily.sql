-- Usage summed per UTC day and user, kept by a trigger on `usage`: whatever inserts a usage row
-- (a replica's flush, `swapbot db import`) keeps it right. Replicas read it every second for budgets
-- and `/usage` (a month is at most 31 rows per active user, never a scan of every turn) and read only
-- rows changed lately (`updated_at`) between two full reads.
CREATE TABLE usage_daily (
    day          BIGINT      NOT NULL, -- t_unix_ms / 86400000
    user_id      BIGINT      NOT NULL,
    turns        BIGINT      NOT NULL,
    input        BIGINT      NOT NULL,
    cached_input BIGINT      NOT NULL,
    output       BIGINT      NOT NULL,
    reasoning    BIGINT      NOT NULL,
    embedding    BIGINT      NOT NULL,
    micro_usd    BIGINT      NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (day, user_id)
);
CREATE INDEX usage_daily_by_update ON usage_daily (updated_at);

INSERT INTO usage_daily (day, user_id, turns, input, cached_input, output, reasoning, embedding, micro_usd)
SELECT t_unix_ms / 86400000, user_id, count(*), sum(input), sum(cached_input), sum(output), sum(reasoning),
       sum(embedding), sum(micro_usd)
FROM usage GROUP BY 1, 2;

-- Rows in (day, user) order, so two replicas flushing at once lock shared rows in the same order
-- and never deadlock.
CREATE FUNCTION usage_roll_up() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_daily AS d (day, user_id, turns, input, cached_input, output, reasoning, embedding, micro_usd)
    SELECT t_unix_ms / 86400000, user_id, count(*), sum(input), sum(cached_input), sum(output), sum(reasoning),
           sum(embedding), sum(micro_usd)
    FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (day, user_id) DO UPDATE SET
        turns = d.turns + EXCLUDED.turns,
        input = d.input + EXCLUDED.input,
        cached_input = d.cached_input + EXCLUDED.cached_input,
        output = d.output + EXCLUDED.output,
        reasoning = d.reasoning + EXCLUDED.reasoning,
        embedding = d.embedding + EXCLUDED.embedding,
        micro_usd = d.micro_usd + EXCLUDED.micro_usd,
        updated_at = now();
    RETURN NULL;
END $$;

CREATE TRIGGER usage_roll_up AFTER INSERT ON usage
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_roll_up();
