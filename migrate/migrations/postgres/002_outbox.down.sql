DROP TABLE IF EXISTS {{table "outbox"}};
DROP FUNCTION IF EXISTS {{func "outbox_notify"}}();
