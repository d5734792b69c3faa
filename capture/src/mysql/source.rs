//! The MySQL/MariaDB capture loop: preflight, the snapshot of the tables not yet read, then
//! the binlog (see the sibling modules).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use mysql_async::{Conn, Opts};
use sluice_schemas::TableId;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

use crate::epoch::Epoch;
use crate::publisher::Publisher;
use crate::spill::Budget;
use crate::state::{read_latest_state, SnapshotMode, TableState};
use crate::CaptureError;

use super::binlog::Stream;
use super::config::MysqlSourceConfig;
use super::mysql_error;
use super::position::{pack, split_file, MysqlState};
use super::preflight::{identify, load_collations, master_status, opts, preflight};
use super::snapshot::Snapshot;

/// A running capture of one source of this kind.
pub type MysqlCapture = crate::Capture<MysqlSourceConfig>;

impl MysqlCapture {
    /// Runs until `shutdown`, reconnecting with backoff on transient errors. Returns the
    /// definite error that stopped it, if any.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), CaptureError> {
        let span = info_span!("capture", source = %self.name);
        crate::retry::with_backoff(&self.name, &self.settings.liveness, &shutdown, || {
            self.run_once(&shutdown)
        })
        .instrument(span)
        .await
    }

    fn opts(&self) -> Result<Opts, CaptureError> {
        opts(&self.name, &self.config, self.password.as_deref())
    }

    async fn run_once(&self, shutdown: &CancellationToken) -> Result<(), CaptureError> {
        let tables = self
            .config
            .table_ids()
            .map_err(|e| CaptureError::Definite(format!("sources.{}.tables: {e}", self.name)))?;
        let opts = self.opts()?;
        let mut conn = Conn::new(opts.clone()).await.map_err(mysql_error)?;
        let server_id = preflight(&mut conn, &tables, self.config.server_id).await?;
        let collations = load_collations(&mut conn).await?;
        // The state topic must exist before it is read.
        let (mut publisher, acks) = Publisher::new(&self.transport, self.settings.clone(), 0)?;
        publisher.prepare().await?;
        publisher.refuse_legacy_topics(&tables).await?;
        let stored =
            read_latest_state(&self.transport, &self.settings.state_topic, &self.name).await?;
        let existed = stored.is_some();
        let mut state = match stored {
            None => MysqlState::default(),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CaptureError::Definite(format!(
                    "the capture state of source {} is unreadable ({e}); delete that record to re-snapshot",
                    self.name
                ))
            })?,
        };
        state.claim(
            &self.name,
            &self.settings.state_topic,
            &self.settings.topic_prefix,
        )?;
        // The source epoch, decided and recorded before anything is published in it.
        let identity = identify(&mut conn).await?;
        let (epoch, changed) =
            Epoch::decide(&self.name, state.epoch.as_ref(), existed, &identity, None);
        publisher.set_epoch(&epoch);
        state.epoch = Some(epoch);
        if changed {
            publisher
                .write_state(&serde_json::to_string(&state).expect("state serializes"))
                .await?;
        }

        let pending: Vec<TableId> = tables
            .iter()
            .filter(|t| {
                !matches!(
                    state.tables.get(&t.to_string()),
                    Some(TableState::Done { .. })
                )
            })
            .cloned()
            .collect();
        let snapshot_wanted = self.config.snapshot == SnapshotMode::Initial && !pending.is_empty();
        if snapshot_wanted {
            let snapshot = Snapshot {
                capture: self,
                server_id,
            };
            snapshot
                .run(&mut conn, &pending, &mut state, &mut publisher, shutdown)
                .await?;
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
        if state.position.is_none() {
            // Never snapshotted (snapshot = "never"): start at the server's current position.
            let (file, pos) = master_status(&mut conn).await?;
            let (base, seq) = split_file(&file).ok_or_else(|| {
                CaptureError::Definite(format!("unexpected binlog file name `{file}`"))
            })?;
            state.file_base = base.to_string();
            state.position = Some(pack(seq, pos));
            publisher
                .write_state(&serde_json::to_string(&state).expect("state serializes"))
                .await?;
        }
        drop(conn);
        let mut stream = Stream {
            capture: self,
            collations,
            state,
            publisher,
            acks,
            tables: tables.iter().map(ToString::to_string).collect(),
            maps: HashMap::new(),
            codecs: HashMap::new(),
            xa: None,
            prepared: Vec::new(),
            held: Budget::new(&self.name, &self.config.spill),
            gtids: VecDeque::new(),
            written: 0,
            catalog: None,
            opts: opts.clone(),
            name: Arc::from(self.name.as_str()),
            signal_table: self.config.signal_table_id(),
            signals: Vec::new(),
            rereads: VecDeque::new(),
            reread_next: (0, 0),
            source_server_id: server_id,
        };
        stream.run(opts, shutdown).await
    }
}
