DROP TABLE IF EXISTS {{table "replica_parked"}};
DROP TABLE IF EXISTS {{table "replica_position"}};
