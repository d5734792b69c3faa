use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::{find_binary, run, share_for_binary, AtExit, ChildGuard};
use crate::{free_port, wait_until, Result};

const MARIADB_BIN_DIRS: &[&str] = &["/usr/sbin", "/usr/bin"];

/// A MariaDB server configured for CDC (`log-bin`, `binlog_format=ROW`,
/// `binlog_row_image=FULL`, `binlog_row_metadata=FULL`, a `server-id`), in its own temporary
/// directory, with a user `sluice`/`sluice` that has every privilege over TCP.
///
/// Or a test's part of the binary's shared server ([`MariaDb::shared`]): its databases are
/// named with a prefix of its own ([`MariaDb::db`]).
pub struct MariaDb {
    pub port: u16,
    dir: Home,
    client: PathBuf,
    server: Option<ChildGuard>,
    /// `mariadbd` and its arguments, to start it again after [`MariaDb::restart`] stops it.
    server_cmd: (PathBuf, Vec<String>),
    /// What the test's databases are called with on the shared server; empty on its own.
    prefix: String,
}

/// Where a server lives: a temporary directory of the test's own, or the shared server's.
enum Home {
    Own(tempfile::TempDir),
    Shared(PathBuf),
}

/// What a handle needs to reach the binary's shared server.
#[derive(Clone)]
struct SharedServer {
    port: u16,
    dir: PathBuf,
    client: PathBuf,
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
        let mut args: Vec<String> = vec![
            "--no-defaults".into(),
            format!("--datadir={}", data.display()),
            format!("--tmpdir={}", tmp.display()),
            format!("--socket={}", dir.path().join("mysqld.sock").display()),
            format!("--pid-file={}", dir.path().join("mysqld.pid").display()),
            format!("--log-bin={}", dir.path().join("binlog").display()),
            format!("--port={port}"),
        ];
        args.extend(
            [
                "--bind-address=127.0.0.1",
                "--user=root",
                "--server-id=1",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--innodb-flush-log-at-trx-commit=2",
                "--innodb-buffer-pool-size=64M",
                "--skip-name-resolve",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().cloned());
        let mut db = MariaDb {
            port,
            dir: Home::Own(dir),
            client,
            server: None,
            server_cmd: (mariadbd, args),
            prefix: String::new(),
        };
        db.spawn_server()?;
        db.root_sql(
            "CREATE USER 'sluice'@'%' IDENTIFIED BY 'sluice'; \
             GRANT ALL PRIVILEGES ON *.* TO 'sluice'@'%' WITH GRANT OPTION;",
        )?;
        Ok(db)
    }

    /// The test's part of the binary's shared server, started by the first test that asks:
    /// the databases it creates through [`MariaDb::create_database`] and names with
    /// [`MariaDb::db`] carry a prefix of its own and are dropped when the handle drops. Its
    /// binlog holds every test's changes: a capture reads past the others'. A test that
    /// restarts, reconfigures or resets its server starts one of its own.
    pub fn shared() -> Result<MariaDb> {
        static SHARED: std::sync::OnceLock<Result<SharedServer>> = std::sync::OnceLock::new();
        let server = share_for_binary("mariadb", &SHARED, MariaDb::start, |db| {
            (
                SharedServer {
                    port: db.port,
                    dir: db.home().to_path_buf(),
                    client: db.client.clone(),
                },
                AtExit {
                    pid: db.server.as_ref().and_then(ChildGuard::pid),
                    dir: db.home().to_path_buf(),
                },
            )
        })?;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(MariaDb {
            port: server.port,
            dir: Home::Shared(server.dir),
            client: server.client,
            server: None,
            server_cmd: (PathBuf::new(), Vec::new()),
            prefix: format!("t{n}_"),
        })
    }

    /// The name the database the test calls `name` has on the server: the same on a server of
    /// the test's own, prefixed on the shared one.
    pub fn db(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A replica `server_id` for a capture, unique in the test binary (captures of one server
    /// must differ: the server drops a replica's connection when another registers the same id).
    pub fn next_server_id() -> u32 {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(5400);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn home(&self) -> &std::path::Path {
        match &self.dir {
            Home::Own(dir) => dir.path(),
            Home::Shared(dir) => dir,
        }
    }

    fn spawn_server(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.server_cmd.0);
        cmd.args(&self.server_cmd.1);
        let log = self.home().join("mariadb.log");
        self.server = Some(ChildGuard::spawn(
            "mariadbd",
            cmd,
            &log,
            None,
            libc::SIGTERM,
        )?);
        wait_until("mariadb", Duration::from_secs(60), || {
            self.root_sql("SELECT 1").is_ok()
        })
        .map_err(|e| format!("{e}; log:\n{}", self.log()))
    }

    /// Stops the server (clean shutdown) and starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        assert!(
            matches!(self.dir, Home::Own(_)),
            "restarting changes the whole server: the test needs MariaDb::start(), not the shared one"
        );
        if let Some(mut s) = self.server.take() {
            s.stop(Duration::from_secs(30));
        }
        self.spawn_server()
    }

    /// A `mysql://` url for the `sluice` user over TCP.
    pub fn url(&self) -> String {
        format!("mysql://sluice:sluice@127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home().join("mariadb.log")).unwrap_or_default()
    }

    /// Runs SQL as root over the server's socket; returns tab-separated rows without headers.
    pub fn root_sql(&self, sql: &str) -> Result<String> {
        root_sql_via(&self.client, &self.home().join("mysqld.sock"), sql)
    }

    /// A function that runs SQL as root like [`MariaDb::root_sql`] (panicking on failure), for
    /// writer threads that cannot borrow the server.
    pub fn root_sql_command(&self) -> impl Fn(&str) + Send + 'static {
        let (client, socket) = (self.client.clone(), self.home().join("mysqld.sock"));
        move |sql: &str| {
            root_sql_via(&client, &socket, sql).unwrap();
        }
    }

    /// `sysbench oltp_read_write <command>` over `tables` tables of `rows` rows in the database
    /// the test calls `db`, as the `sluice` user, with `extra` options; its report. Panics when
    /// it fails (`deploy/local/prereqs.sh` installs sysbench).
    pub fn sysbench(
        &self,
        db: &str,
        (tables, rows): (u32, u32),
        command: &str,
        extra: &[&str],
    ) -> String {
        crate::output_of(&mut self.sysbench_command(db, (tables, rows), command, extra))
    }

    /// [`MariaDb::sysbench`] on a thread of its own (a load that runs while the test acts).
    pub fn sysbench_in_background(
        &self,
        db: &str,
        (tables, rows): (u32, u32),
        command: &str,
        extra: &[&str],
    ) -> std::thread::JoinHandle<String> {
        let mut cmd = self.sysbench_command(db, (tables, rows), command, extra);
        std::thread::spawn(move || crate::output_of(&mut cmd))
    }

    fn sysbench_command(
        &self,
        db: &str,
        (tables, rows): (u32, u32),
        command: &str,
        extra: &[&str],
    ) -> Command {
        let mut cmd = Command::new("sysbench");
        cmd.arg("oltp_read_write")
            .args([
                "--db-driver=mysql".to_string(),
                "--mysql-host=127.0.0.1".to_string(),
                format!("--mysql-port={}", self.port),
                "--mysql-user=sluice".to_string(),
                "--mysql-password=sluice".to_string(),
                format!("--mysql-db={}", self.db(db)),
                format!("--tables={tables}"),
                format!("--table-size={rows}"),
            ])
            .args(extra)
            .arg(command);
        cmd
    }

    /// Creates the database the test calls `name` ([`MariaDb::db`]).
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.root_sql(&format!("CREATE DATABASE `{}`", self.db(name)))
            .map(|_| ())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop(Duration::from_secs(30));
        }
        if !self.prefix.is_empty() {
            // The test's databases on the shared server (best effort).
            let like = self.prefix.replace('_', "\\_");
            if let Ok(dbs) = self.root_sql(&format!("SHOW DATABASES LIKE '{like}%'")) {
                for db in dbs.lines().filter(|l| !l.is_empty()) {
                    let _ = self.root_sql(&format!("DROP DATABASE `{db}`"));
                }
            }
        }
    }
}

/// Runs SQL as root through `client` over the server's socket.
fn root_sql_via(client: &std::path::Path, socket: &std::path::Path, sql: &str) -> Result<String> {
    run(
        Command::new(client)
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
}
