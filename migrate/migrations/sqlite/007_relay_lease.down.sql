DROP TABLE IF EXISTS {{table "relay_instance"}};
DROP TABLE IF EXISTS {{table "relay_lease"}};
