-- Runs once, when the mysql container initialises its data directory.
CREATE USER 'sluice'@'%' IDENTIFIED WITH mysql_native_password BY 'sluice';
GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.* TO 'sluice'@'%';
CREATE DATABASE IF NOT EXISTS shop;
CREATE TABLE shop.items (
    id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
    sku varchar(64) NOT NULL UNIQUE,
    price decimal(10, 2) NOT NULL,
    stock int NOT NULL DEFAULT 0,
    updated_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
);
INSERT INTO shop.items (sku, price, stock) VALUES ('tea-1kg', 12.50, 40), ('cup-blue', 4.00, 120);
