//! Which database errors are worth retrying, by name: one table for capture and the sinks,
//! PostgreSQL by SQLSTATE, MySQL/MariaDB by server error code.

/// PostgreSQL SQLSTATEs (and classes, by their first characters) that retrying can get past
/// without anyone changing anything.
pub mod sqlstate {
    /// Class 08: the connection failed or broke.
    pub const CONNECTION_EXCEPTION: &str = "08";
    /// Class 57P: the server is shutting down, crashed, or cannot connect now (admin
    /// shutdown, crash shutdown, cannot connect now, database dropped).
    pub const OPERATOR_INTERVENTION: &str = "57P";
    /// Class 53: out of disk, memory or connections.
    pub const INSUFFICIENT_RESOURCES: &str = "53";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const DEADLOCK_DETECTED: &str = "40P01";
    /// Object in use: a replication slot another walsender still holds (right after a
    /// restart), a lock `NOWAIT` could not take.
    pub const OBJECT_IN_USE: &str = "55006";
    /// A lock `NOWAIT` could not take.
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";

    const CLASSES: &[&str] = &[
        CONNECTION_EXCEPTION,
        OPERATOR_INTERVENTION,
        INSUFFICIENT_RESOURCES,
    ];
    const CODES: &[&str] = &[
        SERIALIZATION_FAILURE,
        DEADLOCK_DETECTED,
        OBJECT_IN_USE,
        LOCK_NOT_AVAILABLE,
    ];

    /// Whether an error with this SQLSTATE is worth retrying.
    pub fn is_transient(code: &str) -> bool {
        CLASSES.iter().any(|c| code.starts_with(c)) || CODES.contains(&code)
    }
}

/// MySQL/MariaDB server error codes that retrying can get past.
pub mod mysql {
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    pub const SERVER_SHUTDOWN: u16 = 1053;
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    pub const LOCK_DEADLOCK: u16 = 1213;
    /// MariaDB: the connection was killed (`KILL CONNECTION`, a server shutting down).
    pub const CONNECTION_KILLED: u16 = 1927;
    pub const SERVER_GONE: u16 = 2006;
    pub const SERVER_LOST: u16 = 2013;

    const CODES: &[u16] = &[
        TOO_MANY_CONNECTIONS,
        SERVER_SHUTDOWN,
        LOCK_WAIT_TIMEOUT,
        LOCK_DEADLOCK,
        CONNECTION_KILLED,
        SERVER_GONE,
        SERVER_LOST,
    ];

    /// Whether a server error with this code is worth retrying.
    pub fn is_transient(code: u16) -> bool {
        CODES.contains(&code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_codes_are_told_apart() {
        assert!(sqlstate::is_transient("08006"));
        assert!(sqlstate::is_transient("57P01"));
        assert!(sqlstate::is_transient("40001"));
        assert!(sqlstate::is_transient("55006"));
        assert!(!sqlstate::is_transient("23505"));
        assert!(!sqlstate::is_transient("42P01"));
        assert!(mysql::is_transient(1213) && mysql::is_transient(1927));
        assert!(!mysql::is_transient(1062));
    }
}
