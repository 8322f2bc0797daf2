-- Schema 6: each audit row names the node that appended it (`node_id`, the
-- host name by default): one chain for the whole cluster. Rows written
-- before this have none (NULL) and keep their hash (format v1); rows with a
-- node are hashed over it too (format v2, decision 0031).
ALTER TABLE audit_log ADD COLUMN node TEXT;
