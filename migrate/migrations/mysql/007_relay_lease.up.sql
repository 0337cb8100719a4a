-- Leases of the relay (see the PostgreSQL migration for the model).
CREATE TABLE {{table "relay_lease"}} (
    slot          INT NOT NULL PRIMARY KEY,
    owner         VARCHAR(255) NOT NULL DEFAULT '',
    epoch         BIGINT NOT NULL DEFAULT 0,
    expires_at_ms BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT {{ident "relay_lease_slot"}} CHECK (slot BETWEEN 0 AND 63)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
INSERT INTO {{table "relay_lease"}} (slot) VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9), (10), (11), (12), (13), (14), (15), (16), (17), (18), (19), (20), (21), (22), (23), (24), (25), (26), (27), (28), (29), (30), (31), (32), (33), (34), (35), (36), (37), (38), (39), (40), (41), (42), (43), (44), (45), (46), (47), (48), (49), (50), (51), (52), (53), (54), (55), (56), (57), (58), (59), (60), (61), (62), (63);

CREATE TABLE {{table "relay_instance"}} (
    id            VARCHAR(255) NOT NULL PRIMARY KEY,
    started_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
