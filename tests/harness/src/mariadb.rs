use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::{find_binary, run, ChildGuard};
use crate::{free_port, wait_until, Result};

const MARIADB_BIN_DIRS: &[&str] = &["/usr/sbin", "/usr/bin"];

/// A MariaDB server configured for CDC (`log-bin`, `binlog_format=ROW`,
/// `binlog_row_image=FULL`, `binlog_row_metadata=FULL`, a `server-id`), in its own temporary
/// directory, with a user `sluice`/`sluice` that has every privilege over TCP.
pub struct MariaDb {
    pub port: u16,
    dir: tempfile::TempDir,
    client: PathBuf,
    server: Option<ChildGuard>,
}

impl MariaDb {
    pub fn start() -> Result<MariaDb> {
        MariaDb::start_with(&[])
    }

    /// Starts with extra server options (`--ssl-cert=…`).
    pub fn start_with(extra: &[String]) -> Result<MariaDb> {
        let mariadbd = find_binary("mariadbd", "SLUICE_MARIADB_BIN", MARIADB_BIN_DIRS)?;
        let install = find_binary("mariadb-install-db", "SLUICE_MARIADB_BIN", MARIADB_BIN_DIRS)?;
        let client = find_binary("mariadb", "SLUICE_MARIADB_BIN", MARIADB_BIN_DIRS)?;
        let dir = tempfile::Builder::new()
            .prefix("sluice-mariadb-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        // Each server gets its own tmpdir: in the shared /tmp, concurrent bootstraps collide on
        // temporary table names ("Could not remove temporary table").
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).map_err(|e| e.to_string())?;
        run(
            Command::new(&install)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .args([
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--user=root",
                ]),
            None,
        )?;
        let port = free_port();
        let mut cmd = Command::new(&mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!(
                "--socket={}",
                dir.path().join("mysqld.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mysqld.pid").display()
            ))
            .arg(format!("--log-bin={}", dir.path().join("binlog").display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--server-id=1",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--innodb-flush-log-at-trx-commit=2",
                "--innodb-buffer-pool-size=64M",
                "--skip-name-resolve",
            ]);
        cmd.args(extra);
        let log = dir.path().join("mariadb.log");
        let server = ChildGuard::spawn("mariadbd", cmd, &log, None, libc::SIGTERM)?;
        let db = MariaDb {
            port,
            dir,
            client,
            server: Some(server),
        };
        wait_until("mariadb", Duration::from_secs(60), || {
            db.root_sql("SELECT 1").is_ok()
        })
        .map_err(|e| format!("{e}; log:\n{}", db.log()))?;
        db.root_sql(
            "CREATE USER 'sluice'@'%' IDENTIFIED BY 'sluice'; \
             GRANT ALL PRIVILEGES ON *.* TO 'sluice'@'%' WITH GRANT OPTION;",
        )?;
        Ok(db)
    }

    /// A `mysql://` url for the `sluice` user over TCP.
    pub fn url(&self) -> String {
        format!("mysql://sluice:sluice@127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mariadb.log")).unwrap_or_default()
    }

    /// Runs SQL as root over the server's socket; returns tab-separated rows without headers.
    pub fn root_sql(&self, sql: &str) -> Result<String> {
        run(
            Command::new(&self.client)
                .arg(format!(
                    "--socket={}",
                    self.dir.path().join("mysqld.sock").display()
                ))
                .args([
                    "-uroot",
                    "--default-character-set=utf8mb4",
                    "--batch",
                    "--skip-column-names",
                    "-e",
                    sql,
                ]),
            None,
        )
    }

    /// A function that runs SQL as root like [`MariaDb::root_sql`] (panicking on failure), for
    /// writer threads that cannot borrow the server.
    pub fn root_sql_command(&self) -> impl Fn(&str) + Send + 'static {
        let (client, socket) = (self.client.clone(), self.dir.path().join("mysqld.sock"));
        move |sql: &str| {
            run(
                Command::new(&client)
                    .arg(format!("--socket={}", socket.display()))
                    .args([
                        "-uroot",
                        "--default-character-set=utf8mb4",
                        "--batch",
                        "--skip-column-names",
                        "-e",
                        sql,
                    ]),
                None,
            )
            .unwrap();
        }
    }

    pub fn create_database(&self, name: &str) -> Result<()> {
        self.root_sql(&format!("CREATE DATABASE `{name}`"))
            .map(|_| ())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop(Duration::from_secs(30));
        }
    }
}
