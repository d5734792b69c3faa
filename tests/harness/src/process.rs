use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// Polls `ready` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} was not ready within {timeout:?}"))
}

/// A child process that is stopped (signal, then SIGKILL after a grace period) when dropped,
/// and killed by the kernel if the test process dies first.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    stop_signal: i32,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout/stderr appended to `log`, as `uid`/`gid` when given.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &std::path::Path,
        run_as: Option<(u32, u32)>,
        stop_signal: i32,
    ) -> Result<ChildGuard> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        if let Some((uid, gid)) = run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        set_parent_death_signal(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {name} ({cmd:?}): {e}"))?;
        Ok(ChildGuard {
            name: name.to_string(),
            child: Some(child),
            stop_signal,
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(c) => !matches!(c.try_wait(), Ok(None)),
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends the stop signal and waits up to `grace` before SIGKILL; returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(child.id() as i32, self.stop_signal);
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "harness: {} did not stop within {grace:?}; killing it",
            self.name
        );
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; it runs in the child after fork, after the uid/gid
    // change, so the setting survives into the exec'd server.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Runs a command to completion; its output is in the error when it fails.
pub(crate) fn run(cmd: &mut Command, run_as: Option<(u32, u32)>) -> Result<String> {
    if let Some((uid, gid)) = run_as {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    let out = cmd.output().map_err(|e| format!("run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` to its end and returns its standard output; panics with what it printed when it
/// fails (for a test's own tools: `pgbench`, `sysbench`, `pg_dump`, `sluice reset-state`).
pub fn output_of(cmd: &mut Command) -> String {
    run(cmd, None).unwrap_or_else(|e| panic!("{e}"))
}

/// Finds `name` in `env_dir`, then on PATH, then in `fallbacks`.
pub(crate) fn find_binary(
    name: &str,
    env_var: &str,
    fallbacks: &[&str],
) -> Result<std::path::PathBuf> {
    if let Ok(dir) = std::env::var(env_var) {
        let p = std::path::Path::new(&dir);
        let candidate = if p.is_dir() {
            p.join(name)
        } else {
            p.to_path_buf()
        };
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    for dir in fallbacks {
        let candidate = std::path::Path::new(dir).join(name);
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.exists() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "`{name}` not found (set {env_var}, or run deploy/local/prereqs.sh to install it)"
    ))
}

/// The uid and gid of a system user, when running as root; `None` otherwise.
pub(crate) fn system_user_when_root(user: &str) -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let out = |flag: &str| -> Result<u32> {
        run(Command::new("id").args([flag, user]), None)?
            .trim()
            .parse()
            .map_err(|e| format!("id {flag} {user}: {e}"))
    };
    Ok(Some((out("-u")?, out("-g")?)))
}

pub(crate) fn chown_recursive(path: &std::path::Path, ids: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = ids {
        run(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(path),
            None,
        )?;
    }
    Ok(())
}

/// What a service shared by the test binary leaves behind: its process, killed when the binary
/// exits, and its temporary directory, removed then.
pub(crate) struct AtExit {
    pub pid: Option<u32>,
    pub dir: std::path::PathBuf,
}

/// Starts a service the whole test binary shares, once: `start` runs on a thread of its own
/// that keeps the service and lives as long as the binary, so that the service's parent-death
/// signal (sent when the thread that spawned it ends) comes only when the binary exits. An
/// `atexit` handler then kills it and removes its directory (statics are never dropped).
/// Returns what `describe` says handles need to reach it.
pub(crate) fn share_for_binary<S, T>(
    name: &str,
    cell: &'static std::sync::OnceLock<Result<T>>,
    start: fn() -> Result<S>,
    describe: fn(&S) -> (T, AtExit),
) -> Result<T>
where
    S: 'static,
    T: Clone + Send + Sync + 'static,
{
    cell.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("shared-{name}"))
            .spawn(move || match start() {
                Ok(service) => {
                    let (handle, at_exit) = describe(&service);
                    remember_at_exit(at_exit);
                    let _ = tx.send(Ok(handle));
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|e| e.to_string())?;
        rx.recv().map_err(|e| e.to_string())?
    })
    .clone()
}

static AT_EXIT: std::sync::Mutex<Vec<AtExit>> = std::sync::Mutex::new(Vec::new());

fn remember_at_exit(at_exit: AtExit) {
    let mut list = AT_EXIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if list.is_empty() {
        // SAFETY: registers a plain `extern "C" fn` with no captured state.
        unsafe { libc::atexit(stop_shared_services) };
    }
    list.push(at_exit);
}

extern "C" fn stop_shared_services() {
    let list = AT_EXIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for service in list.iter() {
        if let Some(pid) = service.pid.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: signals and reaps our own child; nothing else waits for it at exit.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        let _ = std::fs::remove_dir_all(&service.dir);
    }
}
