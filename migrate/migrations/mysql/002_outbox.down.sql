DROP TABLE IF EXISTS {{table "outbox"}};
