-- Leases of the relay (see the PostgreSQL migration for the model).
CREATE TABLE {{table "relay_lease"}} (
    slot          INTEGER PRIMARY KEY CHECK (slot BETWEEN 0 AND 63),
    owner         TEXT NOT NULL DEFAULT '',
    epoch         INTEGER NOT NULL DEFAULT 0,
    expires_at_ms INTEGER NOT NULL DEFAULT 0
);
INSERT INTO {{table "relay_lease"}} (slot) VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9), (10), (11), (12), (13), (14), (15), (16), (17), (18), (19), (20), (21), (22), (23), (24), (25), (26), (27), (28), (29), (30), (31), (32), (33), (34), (35), (36), (37), (38), (39), (40), (41), (42), (43), (44), (45), (46), (47), (48), (49), (50), (51), (52), (53), (54), (55), (56), (57), (58), (59), (60), (61), (62), (63);

CREATE TABLE {{table "relay_instance"}} (
    id            TEXT PRIMARY KEY,
    started_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
