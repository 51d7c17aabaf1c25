"""A scratch database shaped like the older HOMEPOT's, for the import tests and the bench.

The schema is the older one as docs/migrating-from-older-homepot.md lists it. It has no unique
constraints on business ids or MAC addresses, so the awkward rows real older databases hold
(duplicates, missing fields, clocks ahead) can be written and the importer must cope.
"""

import contextlib
import uuid

import psycopg

SERVER = "postgresql://postgres@127.0.0.1:5432"

SCHEMA = """
CREATE TABLE sites (
    id serial PRIMARY KEY, site_id varchar(50), name varchar(100), description text,
    location varchar(200), created_at timestamp DEFAULT now(), updated_at timestamp DEFAULT now()
);
CREATE TABLE devices (
    id serial PRIMARY KEY, device_id varchar(100), name varchar(100), device_type varchar(50),
    site_id integer REFERENCES sites(id), ip_address varchar(45), mac_address varchar(17),
    status varchar(20), firmware_version varchar(50), last_seen timestamp, config json,
    created_at timestamp DEFAULT now(), updated_at timestamp DEFAULT now()
);
CREATE TABLE users (
    id serial PRIMARY KEY, username varchar(100), email varchar(255), hashed_password varchar(255),
    is_admin boolean DEFAULT false, is_active boolean DEFAULT true,
    created_at timestamp DEFAULT now(), updated_at timestamp DEFAULT now()
);
CREATE TABLE jobs (
    id serial PRIMARY KEY, job_id varchar(100), action varchar(100), description text,
    site_id integer REFERENCES sites(id), payload json, priority varchar(20), status varchar(20),
    created_by integer REFERENCES users(id), created_at timestamp DEFAULT now(),
    updated_at timestamp DEFAULT now(), started_at timestamp, completed_at timestamp
);
CREATE TABLE health_checks (
    id bigserial PRIMARY KEY, device_id integer REFERENCES devices(id), is_healthy boolean,
    response_time_ms integer, status_code integer, endpoint varchar(200), response_data json,
    error_message text, timestamp timestamp DEFAULT now()
);
CREATE TABLE audit_logs (
    id bigserial PRIMARY KEY, event_type varchar(100), description text,
    user_id integer REFERENCES users(id), job_id integer REFERENCES jobs(id),
    device_id integer REFERENCES devices(id), site_id integer REFERENCES sites(id),
    old_values json, new_values json, event_metadata json, ip_address varchar(45),
    user_agent text, created_at timestamp DEFAULT now()
);
"""


@contextlib.contextmanager
def scratch_database(prefix: str = "homepot_legacy"):
    """Create an empty database `<prefix>_<uuid>` with the older schema; yield its URL; drop it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{SERVER}/{name}"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SCHEMA)
        yield url
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
