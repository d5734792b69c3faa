//! Applies mapping schemes to decoded changes, and reloads them when their files change.
//!
//! A table without a scheme for this router's sink is written as it is (identity). A table with
//! schemes is written as each says; a scheme is compiled once per writer-schema version it
//! meets. The directory is rescanned every `reload_interval`: a changed file that parses and
//! compiles against the table's latest version replaces the running scheme; one that does not
//! is logged with its errors and the running scheme is kept.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sluice_schemas::avro::DecodedEvent;
use sluice_schemas::scheme::{scheme_files, Mapping, Scheme, SchemeErrors};
use sluice_schemas::{RowChange, TableId, TableSchema};
use tracing::{error, info, warn};

use crate::metrics as m;

/// Why a change could not be mapped: the dead-letter reason and the detail.
pub struct Rejected {
    pub reason: &'static str,
    pub detail: String,
}

/// A scheme that does not fit the writer schema a change was written with: the change waits
/// (its partition held) until the scheme is fixed, rather than being dead-lettered.
pub struct Mismatch {
    pub detail: String,
}

/// A scheme compiled against one writer schema (or why it does not fit it).
type Compiled = (Arc<TableSchema>, Result<Arc<Mapping>, String>);

/// What identifies a version of a file on disk.
type Stamp = (SystemTime, u64);

struct Loaded {
    stamp: Stamp,
    scheme: Arc<Scheme>,
}

/// The schemes of one router; see the module docs.
pub struct Mapper {
    dir: Option<PathBuf>,
    sink: String,
    hmac_key: Option<Vec<u8>>,
    reload_interval: Duration,
    last_scan: Instant,
    files: BTreeMap<PathBuf, Loaded>,
    by_source: HashMap<TableId, Vec<Arc<Scheme>>>,
    /// Per scheme file: the mappings compiled so far, by writer schema.
    compiled: HashMap<PathBuf, Vec<Compiled>>,
    /// The latest writer schema seen per source table, to check reloaded schemes against.
    latest: HashMap<TableId, Arc<TableSchema>>,
    /// Versions of files found invalid, so each is reported once.
    rejected: HashMap<PathBuf, Stamp>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Mapper {
    /// No schemes: every table is written as it is.
    pub fn identity(sink: &str) -> Mapper {
        Mapper {
            dir: None,
            sink: sink.to_string(),
            hmac_key: None,
            reload_interval: Duration::from_secs(3600),
            last_scan: Instant::now(),
            files: BTreeMap::new(),
            by_source: HashMap::new(),
            compiled: HashMap::new(),
            latest: HashMap::new(),
            rejected: HashMap::new(),
        }
    }

    /// Loads every scheme in `dir`. At startup there is no running scheme to fall back on, so
    /// any invalid file is an error (all of their problems, each with its fix).
    pub fn load(
        dir: &Path,
        sink: &str,
        hmac_key: Option<Vec<u8>>,
        reload_interval: Duration,
    ) -> Result<Mapper, String> {
        let mut mapper = Mapper {
            dir: Some(dir.to_path_buf()),
            reload_interval,
            hmac_key,
            ..Mapper::identity(sink)
        };
        let mut problems = Vec::new();
        for path in scheme_files(dir)? {
            match mapper.read(&path) {
                Ok(loaded) => {
                    mapper.files.insert(path, loaded);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        mapper.index();
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        info!(dir = %dir.display(), schemes = mapper.files.len(), "loaded mapping schemes");
        metrics::gauge!(m::SCHEMES_ACTIVE).set(mapper.files.len() as f64);
        Ok(mapper)
    }

    fn read(&self, path: &Path) -> Result<Loaded, SchemeErrors> {
        let stamp = stamp(path).unwrap_or((SystemTime::UNIX_EPOCH, 0));
        let scheme = Arc::new(Scheme::load(path)?);
        let others: Vec<Arc<Scheme>> = self.files.values().map(|l| l.scheme.clone()).collect();
        if let Some(conflict) = scheme.conflicts_with(&others) {
            return Err(SchemeErrors(vec![conflict]));
        }
        // Checked against the newest version of its table seen so far, so a reload cannot
        // swap in a scheme that would dead-letter everything.
        if let Some(writer) = self.latest.get(&scheme.source) {
            scheme.compile(writer, self.hmac_key.as_deref())?;
        }
        Ok(Loaded { stamp, scheme })
    }

    fn index(&mut self) {
        self.by_source.clear();
        for loaded in self.files.values() {
            if loaded.scheme.is_for(&self.sink) {
                self.by_source
                    .entry(loaded.scheme.source.clone())
                    .or_default()
                    .push(loaded.scheme.clone());
            }
        }
    }

    /// Rescans the directory when `reload_interval` has passed since the last scan.
    pub fn maybe_reload(&mut self) {
        let Some(dir) = self.dir.clone() else { return };
        if self.last_scan.elapsed() < self.reload_interval {
            return;
        }
        self.last_scan = Instant::now();
        let files = match scheme_files(&dir) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "cannot rescan the scheme directory; keeping the running schemes");
                return;
            }
        };
        let mut changed = false;
        for path in &files {
            let current = stamp(path);
            let known = self
                .rejected
                .get(path)
                .copied()
                .or_else(|| self.files.get(path).map(|l| l.stamp));
            if current.is_some() && known == current {
                continue;
            }
            match self.read(path) {
                Ok(loaded) => {
                    info!(file = %path.display(), source = %loaded.scheme.source, "applied a changed mapping scheme");
                    metrics::counter!(m::SCHEME_RELOADS_TOTAL, "result" => "applied").increment(1);
                    self.compiled.remove(path);
                    self.rejected.remove(path);
                    self.files.insert(path.clone(), loaded);
                    changed = true;
                }
                Err(e) => {
                    error!(file = %path.display(), errors = %e, "a changed mapping scheme is invalid; the running one is kept");
                    metrics::counter!(m::SCHEME_RELOADS_TOTAL, "result" => "rejected").increment(1);
                    if let Some(s) = current {
                        self.rejected.insert(path.clone(), s);
                    }
                }
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !files.contains(p))
            .cloned()
            .collect();
        self.rejected.retain(|p, _| files.contains(p));
        for path in gone {
            info!(file = %path.display(), "a mapping scheme was removed; its table is written as it is");
            self.files.remove(&path);
            self.compiled.remove(&path);
            changed = true;
        }
        if changed {
            self.index();
            metrics::gauge!(m::SCHEMES_ACTIVE).set(self.active() as f64);
        }
    }

    fn active(&self) -> usize {
        self.files.len()
    }

    /// Whether a scheme of `table` reads the commit time (`source.ts_ms`), which a change of
    /// a transaction still in progress does not have yet.
    pub fn reads_commit_time(&self, table: &TableId) -> bool {
        self.by_source.get(table).is_some_and(|schemes| {
            schemes.iter().any(|s| {
                s.filter
                    .iter()
                    .chain(s.fields.iter().filter_map(|f| f.expr.as_ref()))
                    .any(|e| e.source.contains("ts_ms"))
            })
        })
    }

    /// Maps one decoded change of `table` (its writer schema). Several schemes may map one
    /// source table into several targets; a change one of them rejects is reported (to be
    /// dead-lettered) while the others' changes stand. A scheme that does not fit this
    /// version of the table at all is a [`Mismatch`]: none of the change is mapped.
    pub fn map(
        &mut self,
        table: &Arc<TableSchema>,
        event: DecodedEvent,
    ) -> Result<(Vec<RowChange>, Option<Rejected>), Mismatch> {
        let Some(schemes) = self.by_source.get(&table.id).cloned() else {
            return Ok((vec![event.row], None));
        };
        if !self
            .latest
            .get(&table.id)
            .is_some_and(|t| Arc::ptr_eq(t, table))
        {
            self.latest.insert(table.id.clone(), table.clone());
        }
        let mappings = schemes
            .iter()
            .map(|scheme| self.mapping(scheme, table))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|detail| Mismatch { detail })?;
        let mut out = Vec::new();
        let mut rejected: Option<Rejected> = None;
        for mapping in mappings {
            match mapping.apply(
                event.op,
                event.before.as_deref(),
                event.after.as_deref(),
                event.source_ts_ms,
            ) {
                Ok(mapped) => out.extend(mapped),
                Err(detail) => {
                    rejected = Some(Rejected {
                        reason: "scheme_rejected",
                        detail,
                    });
                }
            }
        }
        Ok((out, rejected))
    }

    /// The scheme compiled against this writer version (cached, errors too).
    fn mapping(
        &mut self,
        scheme: &Arc<Scheme>,
        table: &Arc<TableSchema>,
    ) -> Result<Arc<Mapping>, String> {
        let cache = self.compiled.entry(scheme.file.clone()).or_default();
        if let Some((_, m)) = cache.iter().find(|(t, _)| Arc::ptr_eq(t, table)) {
            return m.clone();
        }
        let result = scheme
            .compile(table, self.hmac_key.as_deref())
            .map(|m| {
                for w in &m.warnings {
                    warn!(warning = %w, "mapping scheme");
                }
                Arc::new(m)
            })
            .map_err(|e| {
                error!(file = %scheme.file.display(), table = %table.id, errors = %e, "a mapping scheme does not fit this version of its table; its changes wait (their partitions paused) until the scheme is fixed");
                format!("this version of {} does not fit the scheme:\n{e}", table.id)
            });
        cache.push((table.clone(), result.clone()));
        result
    }
}
