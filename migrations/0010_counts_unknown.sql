-- shardfleet schema, version 10: a status word the fleet does not know (only a tool that
-- switched off the CHECK on `status` can write one) is counted under no status, as a
-- recount counts it and as PostgreSQL's triggers do. The triggers of 0003 took every
-- word past 'done' for 'failed', and so counted such a row as failed. The same triggers
-- otherwise, on the same slots; and the counts of the recorded layout are counted again
-- at the end, so a row already counted so is counted no more (one read of the table,
-- as migration 0003 made).

DROP TRIGGER IF EXISTS video_counts_insert;
CREATE TRIGGER video_counts_insert
AFTER INSERT ON videos
BEGIN
    UPDATE video_counts SET videos = videos + 1
    WHERE slot = (NEW.video_id % (SELECT workers FROM video_counts_layout)) * 4
               + CASE NEW.status WHEN 'pending' THEN 0 WHEN 'running' THEN 1 WHEN 'done' THEN 2 WHEN 'failed' THEN 3 END;
END;

DROP TRIGGER IF EXISTS video_counts_update;
CREATE TRIGGER video_counts_update
AFTER UPDATE OF status, video_id ON videos
WHEN OLD.status <> NEW.status OR OLD.video_id <> NEW.video_id
BEGIN
    UPDATE video_counts SET videos = videos - 1
    WHERE slot = (OLD.video_id % (SELECT workers FROM video_counts_layout)) * 4
               + CASE OLD.status WHEN 'pending' THEN 0 WHEN 'running' THEN 1 WHEN 'done' THEN 2 WHEN 'failed' THEN 3 END;
    UPDATE video_counts SET videos = videos + 1
    WHERE slot = (NEW.video_id % (SELECT workers FROM video_counts_layout)) * 4
               + CASE NEW.status WHEN 'pending' THEN 0 WHEN 'running' THEN 1 WHEN 'done' THEN 2 WHEN 'failed' THEN 3 END;
END;

DROP TRIGGER IF EXISTS video_counts_delete;
CREATE TRIGGER video_counts_delete
AFTER DELETE ON videos
BEGIN
    UPDATE video_counts SET videos = videos - 1
    WHERE slot = (OLD.video_id % (SELECT workers FROM video_counts_layout)) * 4
               + CASE OLD.status WHEN 'pending' THEN 0 WHEN 'running' THEN 1 WHEN 'done' THEN 2 WHEN 'failed' THEN 3 END;
END;

UPDATE video_counts SET videos = 0;
UPDATE video_counts SET videos = c.n
FROM (SELECT video_id % (SELECT workers FROM video_counts_layout) AS shard, status, count(*) AS n
      FROM videos GROUP BY 1, 2) AS c
WHERE video_counts.shard = c.shard AND video_counts.status = c.status;
