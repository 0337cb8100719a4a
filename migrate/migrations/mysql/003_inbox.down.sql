DROP TABLE IF EXISTS {{table "dead_letter"}};
DROP TABLE IF EXISTS {{table "inbox_attempt"}};
DROP TABLE IF EXISTS {{table "inbox"}};
