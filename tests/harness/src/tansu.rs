use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::{find_binary, ChildGuard};
use crate::{free_port, wait_until, Result};

/// Where a Tansu broker keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TansuStorage {
    /// `memory://`: fast, gone when the broker stops.
    Memory,
    /// `sqlite://` in the broker's directory: survives `kill -9` and restarts.
    Sqlite,
}

/// A Tansu broker (Kafka protocol) on a free port, in its own temporary directory.
pub struct Tansu {
    pub port: u16,
    storage: TansuStorage,
    bin: PathBuf,
    dir: tempfile::TempDir,
    server: Option<ChildGuard>,
}

impl Tansu {
    pub fn start(storage: TansuStorage) -> Result<Tansu> {
        let bin = find_binary("tansu", "SLUICE_TANSU", &["/root/.cargo/bin"]).or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            find_binary("tansu", "SLUICE_TANSU", &[&format!("{home}/.cargo/bin")])
        })?;
        let dir = tempfile::Builder::new()
            .prefix("sluice-tansu-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut tansu = Tansu {
            port: free_port(),
            storage,
            bin,
            dir,
            server: None,
        };
        tansu.start_server()?;
        Ok(tansu)
    }

    fn start_server(&mut self) -> Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let storage = match self.storage {
            TansuStorage::Memory => "memory://tansu/".to_string(),
            TansuStorage::Sqlite => "sqlite://tansu.db".to_string(),
        };
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(self.dir.path())
            .arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .arg("--storage-engine")
            .arg(storage)
            .env("RUST_LOG", "warn");
        let log = self.dir.path().join("tansu.log");
        self.server = Some(ChildGuard::spawn("tansu", cmd, &log, None, libc::SIGTERM)?);
        let port = self.port;
        wait_until("tansu", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .map_err(|e| format!("{e}; log:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill9();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.start_server()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop(Duration::from_secs(10));
        }
    }
}
