DROP TABLE IF EXISTS {{table "feed_cursor"}};
DROP TABLE IF EXISTS {{table "feed"}};
