DROP TABLE IF EXISTS {{table "migration"}};
