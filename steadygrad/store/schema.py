"""The run database's layout, shared by the writer and the reader.

SQLite cannot hold NaN (it stores it as NULL), so a NULL ``value`` in ``scalars`` means NaN;
nothing else is ever stored as NULL there. +/-Inf, subnormals and 1e300 are stored as they are;
SQLite keeps no sign on zero, so -0.0 reads back as 0.0.

``metrics`` keeps the declaration of each metric the run recorded (``Metric.to_dict`` as JSON),
so a reader draws what the run declared. ``data_lost`` says which steps' values never reached the database (storage full, locked or deleted
while the run trained): the run went on, and these steps are the gap.
"""

DB_NAME = "run.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    heartbeat REAL,
    status TEXT NOT NULL,
    pid INTEGER,
    host TEXT,
    version TEXT
);
CREATE TABLE IF NOT EXISTS names (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS scalars (
    step INTEGER NOT NULL,
    name_id INTEGER NOT NULL REFERENCES names(id),
    value REAL,
    wall REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS scalars_by_name ON scalars (name_id, step);
CREATE TABLE IF NOT EXISTS findings (
    id INTEGER PRIMARY KEY,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    location TEXT,
    severity TEXT NOT NULL,
    evidence TEXT NOT NULL,
    batch_ids TEXT
);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    wall REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    name TEXT PRIMARY KEY,
    declaration TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS data_lost (
    id INTEGER PRIMARY KEY,
    first_step INTEGER NOT NULL,
    last_step INTEGER NOT NULL,
    reason TEXT NOT NULL,
    wall REAL NOT NULL
);
CREATE VIEW IF NOT EXISTS scalars_named AS
    SELECT s.step AS step, n.name AS name, s.value AS value, s.wall AS wall
    FROM scalars s JOIN names n ON n.id = s.name_id;
"""

TABLES = ("run", "names", "scalars", "findings", "actions")
"""The tables every run has (``metrics`` and ``data_lost`` are newer and may be missing)."""

STATUSES = ("running", "finished", "crashed", "interrupted")
