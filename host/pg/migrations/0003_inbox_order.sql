-- One chat's updates are answered in order across replicas: a row is not taken while an earlier
-- row of the same chat is still in the inbox (leased to a replica, or waiting). `chat_id` is the
-- message's chat (NULL for an update without one: no order to keep).
ALTER TABLE inbox ADD COLUMN chat_id BIGINT;
UPDATE inbox SET chat_id = (body->'message'->'chat'->>'id')::bigint;
CREATE INDEX inbox_by_chat ON inbox (chat_id, update_id);
