use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::{chown_recursive, find_binary, run, system_user_when_root, ChildGuard};
use crate::{free_port, wait_until, Result};

const PG_BIN_DIRS: &[&str] = &["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"];

/// A PostgreSQL server with `wal_level=logical`, trust authentication on 127.0.0.1, in its
/// own temporary directory. Run as the `postgres` user when the tests run as root, because
/// `initdb` and `postgres` refuse to run as root.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    server: Option<ChildGuard>,
}

impl Postgres {
    /// Initialises and starts a cluster.
    pub fn start() -> Result<Postgres> {
        let initdb = find_binary("initdb", "SLUICE_PG_BIN", PG_BIN_DIRS)?;
        let bin = initdb
            .parent()
            .expect("initdb has a directory")
            .to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let run_as = system_user_when_root("postgres")?;
        chown_recursive(dir.path(), run_as)?;
        run(
            Command::new(&initdb)
                .arg("-D")
                .arg(dir.path().join("data"))
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]),
            run_as,
        )?;
        let mut pg = Postgres {
            port: free_port(),
            dir,
            bin,
            run_as,
            server: None,
        };
        pg.start_server()?;
        Ok(pg)
    }

    fn start_server(&mut self) -> Result<()> {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "wal_level=logical",
                "-c",
                "max_replication_slots=20",
                "-c",
                "max_wal_senders=20",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=64MB",
            ]);
        let log = self.dir.path().join("postgres.log");
        // SIGINT is PostgreSQL's fast shutdown.
        self.server = Some(ChildGuard::spawn(
            "postgres",
            cmd,
            &log,
            self.run_as,
            libc::SIGINT,
        )?);
        let isready = self.bin.join("pg_isready");
        let port = self.port;
        wait_until("postgres", Duration::from_secs(60), || {
            Command::new(&isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        })
        .map_err(|e| format!("{e}; log:\n{}", self.log()))
    }

    /// The server log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// A PostgreSQL client program of the server's own version (`pg_recvlogical`, `psql`).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// A connection string for `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a database; tests use one each.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .map(|_| ())
    }

    /// Runs SQL through `psql` and returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        run(
            Command::new(self.bin.join("psql"))
                .args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                ])
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-d")
                .arg(db)
                .arg("-c")
                .arg(sql),
            None,
        )
    }

    /// Makes `user` authenticate with SCRAM-SHA-256 over TCP (everyone else stays on trust).
    pub fn require_scram_for(&self, user: &str) -> Result<()> {
        let hba = self.data_dir().join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
        let line = format!("host all {user} 127.0.0.1/32 scram-sha-256\nhost replication {user} 127.0.0.1/32 scram-sha-256\n");
        std::fs::write(&hba, format!("{line}{old}")).map_err(|e| e.to_string())?;
        self.psql("postgres", "SELECT pg_reload_conf()").map(|_| ())
    }

    /// Turns TLS on with the given certificate and key, and refuses connections without TLS
    /// to `databases` (and to replication): the rest stay as they were.
    pub fn enable_tls(
        &self,
        cert: &std::path::Path,
        key: &std::path::Path,
        databases: &[&str],
    ) -> Result<()> {
        let data = self.data_dir();
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            std::fs::copy(from, data.join(to)).map_err(|e| format!("copy {from:?}: {e}"))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data.join(to), std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
        }
        chown_recursive(&data, self.run_as)?;
        let hba = data.join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
        let mut lines = String::new();
        for db in databases.iter().copied().chain(["replication"]) {
            lines.push_str(&format!("hostnossl {db} all 127.0.0.1/32 reject\n"));
        }
        std::fs::write(&hba, format!("{lines}{old}")).map_err(|e| e.to_string())?;
        // ALTER SYSTEM refuses to run in a (multi-statement) transaction: one each.
        for setting in [
            "ssl = on",
            "ssl_cert_file = 'server.crt'",
            "ssl_key_file = 'server.key'",
        ] {
            self.psql("postgres", &format!("ALTER SYSTEM SET {setting}"))?;
        }
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        wait_until("postgres TLS", Duration::from_secs(30), || {
            self.psql(
                "postgres",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            )
            .is_ok_and(|out| out.trim() == "t")
        })
        .map_err(|e| format!("{e}; log:\n{}", self.log()))
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop(Duration::from_secs(30));
        }
    }

    /// Starts the server again after [`Postgres::stop`], on the same port with the same data.
    pub fn start_again(&mut self) -> Result<()> {
        self.start_server()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
