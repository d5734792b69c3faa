-- Runs once, when the postgres container initialises its data directory.
-- The capture user needs REPLICATION; it owns the source tables so it may publish them.
CREATE ROLE sluice LOGIN REPLICATION PASSWORD 'sluice';
CREATE DATABASE shop OWNER sluice;
CREATE DATABASE warehouse OWNER sluice;
\connect shop
SET ROLE sluice;
CREATE TABLE customers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    total numeric(12, 2) NOT NULL,
    status text NOT NULL DEFAULT 'new',
    placed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO customers (email, name) VALUES ('ada@example.com', 'Ada'), ('bob@example.com', 'Bob');
INSERT INTO orders (customer_id, total) VALUES (1, 19.99), (2, 5.00);
