DROP TABLE IF EXISTS {{table "outbox_dead"}};
