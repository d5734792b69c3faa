//! Local mode's transport: capture and routers in one process, no broker.
//!
//! Change messages go from capture to every router subscribed to their topic in memory, as
//! the same encoded records Kafka would carry (key, Avro value, position header). A message
//! counts as delivered — capture's acknowledgement, which lets it confirm a source position —
//! only once *every* subscribed router committed it, i.e. its sink stored it (or dead-lettered
//! it) in a committed transaction. Memory is bounded by capture's `max_in_flight`: a message
//! holds its permit until it is delivered, so a slow sink slows capture.
//!
//! What Kafka's compacted control topics hold (schemas, capture state) is kept in files under
//! the state directory, one JSON object per topic, replaced atomically on each write; messages
//! a router cannot apply are appended to `dead-letters.jsonl` there.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::transport::Record;

/// The partition number local mode records progress under: no Kafka partition has it, so a
/// sink's offsets rows from local mode and from Kafka mode never mix.
pub const PARTITION: i32 = -1;

/// Told when a message is delivered (`None`) or will never be (`Some(why)`), with the opaque
/// it was published with.
pub type Report = Arc<dyn Fn(usize, Option<String>) + Send + Sync>;

/// A message to publish (see [`Local::publish`]).
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub timestamp_ms: i64,
    pub opaque: usize,
    pub report: Report,
}

/// One published change message.
pub struct LocalMessage {
    pub topic: Arc<str>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub timestamp_ms: i64,
    delivery: Delivery,
}

/// Counts the subscribers yet to commit a message; the last one reports it delivered.
struct Delivery {
    remaining: AtomicUsize,
    opaque: usize,
    report: Report,
}

impl LocalMessage {
    /// Whether it belongs to a transaction still in progress at the source (no offset; see
    /// [`crate::headers::PROVISIONAL_HEADER`]).
    pub fn in_progress(&self) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| *k == crate::headers::PROVISIONAL_HEADER)
    }

    /// A subscriber committed it (its sink has it).
    pub fn committed(&self) {
        self.settle(None);
    }

    /// A subscriber will never commit it (it stopped).
    pub fn abandoned(&self, why: &str) {
        self.settle(Some(why.to_string()));
    }

    fn settle(&self, error: Option<String>) {
        let d = &self.delivery;
        if error.is_some() {
            // The first failure is reported at once; later commits by others do not matter.
            if d.remaining.swap(0, Ordering::AcqRel) > 0 {
                (d.report)(d.opaque, error);
            }
            return;
        }
        if d.remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            == Ok(1)
        {
            (d.report)(d.opaque, None);
        }
    }
}

/// What a router reads: every message of the topics it subscribed to.
pub type Subscription = mpsc::UnboundedReceiver<Arc<LocalMessage>>;

/// A topic's name (shared by its messages) and its subscribers.
struct Route {
    name: Arc<str>,
    subscribers: Vec<mpsc::UnboundedSender<Arc<LocalMessage>>>,
}

/// The in-process transport and its state directory.
pub struct Local {
    dir: PathBuf,
    /// By topic.
    routes: Mutex<HashMap<String, Route>>,
    /// Control topics as loaded from (and written to) their files.
    control: Mutex<HashMap<String, BTreeMap<String, String>>>,
    dead_letters: Mutex<()>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").field("dir", &self.dir).finish()
    }
}

impl Local {
    /// Opens (creating it when missing) the state directory.
    pub fn open(dir: &Path) -> Result<Arc<Local>, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the state directory {}: {e}", dir.display()))?;
        let probe = dir.join(".sluice-write-check");
        std::fs::write(&probe, b"ok")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| format!("cannot write in the state directory {}: {e}", dir.display()))?;
        Ok(Arc::new(Local {
            dir: dir.to_path_buf(),
            routes: Mutex::new(HashMap::new()),
            control: Mutex::new(HashMap::new()),
            dead_letters: Mutex::new(()),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A router's feed of `topics`: every message published to one of them from now on.
    pub fn subscribe(&self, topics: &[String]) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut routes = lock(&self.routes);
        for topic in topics {
            routes
                .entry(topic.clone())
                .or_insert_with(|| Route {
                    name: Arc::from(topic.as_str()),
                    subscribers: Vec::new(),
                })
                .subscribers
                .push(tx.clone());
        }
        rx
    }

    /// Hands a message to every router subscribed to its topic; `report` hears when all of
    /// them committed it. A topic no router takes is an error: the change would go nowhere.
    /// A router that stopped stays subscribed: its share is reported undelivered, so capture
    /// confirms nothing its sink never got.
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Vec<(&'static str, Vec<u8>)>,
        timestamp_ms: i64,
        opaque: usize,
        report: Report,
    ) -> Result<(), String> {
        let routes = lock(&self.routes);
        Self::hand_over(
            &routes,
            Outgoing {
                topic,
                key,
                payload,
                headers,
                timestamp_ms,
                opaque,
                report,
            },
        )
    }

    /// Publishes `messages` as one: in every router's feed they follow each other, with no
    /// other message between them (a transaction's commit markers, see
    /// [`crate::headers::CommitMarker`]). Every topic is checked before any is sent.
    pub fn publish_together(&self, messages: Vec<Outgoing<'_>>) -> Result<(), String> {
        let routes = lock(&self.routes);
        for m in &messages {
            Self::route(&routes, m.topic)?;
        }
        for m in messages {
            Self::hand_over(&routes, m)?;
        }
        Ok(())
    }

    fn route<'r>(routes: &'r HashMap<String, Route>, topic: &str) -> Result<&'r Route, String> {
        routes
            .get(topic)
            .filter(|r| !r.subscribers.is_empty())
            .ok_or_else(|| {
                format!(
                    "no router in this process takes {topic}: a local-mode capture publishes only \
                     to the routers `sluice run` starts beside it (check router.topics)"
                )
            })
    }

    fn hand_over(routes: &HashMap<String, Route>, m: Outgoing<'_>) -> Result<(), String> {
        let route = Self::route(routes, m.topic)?;
        let message = Arc::new(LocalMessage {
            topic: route.name.clone(),
            key: m.key.map(<[u8]>::to_vec),
            payload: m.payload.map(<[u8]>::to_vec),
            headers: m.headers,
            timestamp_ms: m.timestamp_ms,
            delivery: Delivery {
                remaining: AtomicUsize::new(route.subscribers.len()),
                opaque: m.opaque,
                report: m.report,
            },
        });
        for tx in &route.subscribers {
            if tx.send(message.clone()).is_err() {
                message.abandoned("a router stopped before taking it");
            }
        }
        Ok(())
    }

    fn control_file(&self, topic: &str) -> PathBuf {
        let safe: String = topic
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.json"))
    }

    fn loaded<'a>(
        &self,
        control: &'a mut HashMap<String, BTreeMap<String, String>>,
        topic: &str,
    ) -> Result<&'a mut BTreeMap<String, String>, String> {
        if !control.contains_key(topic) {
            let path = self.control_file(topic);
            let records = match std::fs::read(&path) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                    format!(
                        "{} is not a Sluice state file ({e}); restore it from a backup, or \
                         remove it to start this state afresh",
                        path.display()
                    )
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            };
            control.insert(topic.to_string(), records);
        }
        Ok(control.get_mut(topic).expect("inserted above"))
    }

    /// Every record of a control topic, as [`crate::transport::read_to_end`] gives Kafka's.
    pub fn read_control(&self, topic: &str) -> Result<Vec<Record>, String> {
        let mut control = lock(&self.control);
        Ok(self
            .loaded(&mut control, topic)?
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone().into_bytes())))
            .collect())
    }

    /// Writes (or with `None` removes) one record of a control topic; durable on return.
    pub fn write_control(
        &self,
        topic: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let mut control = lock(&self.control);
        let path = self.control_file(topic);
        let records = self.loaded(&mut control, topic)?;
        let before = records.clone();
        match value {
            Some(v) => {
                records.insert(key.to_string(), String::from_utf8_lossy(v).into_owned());
            }
            None => {
                records.remove(key);
            }
        }
        let json = serde_json::to_vec_pretty(&*records).map_err(|e| e.to_string())?;
        if let Err(e) = write_durably(&path, &json) {
            *records = before;
            return Err(format!("cannot write {}: {e}", path.display()));
        }
        Ok(())
    }

    /// Appends one dead letter (a JSON object) to `dead-letters.jsonl`; durable on return.
    pub fn dead_letter(&self, record: &serde_json::Value) -> Result<(), String> {
        let _one_at_a_time = lock(&self.dead_letters);
        let path = self.dead_letters_file();
        let mut line = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        line.push(b'\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(&line)?;
                f.sync_data()
            })
            .map_err(|e| format!("cannot append to {}: {e}", path.display()))
    }

    pub fn dead_letters_file(&self) -> PathBuf {
        self.dir.join("dead-letters.jsonl")
    }
}

/// Replaces `path` with `bytes`: written to a temporary file, synced, renamed over it, and the
/// directory synced, so a crash leaves the old file or the new one, never a torn one.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lower-case hex of `bytes` (dead letters keep keys and payloads this way).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Heard = Arc<Mutex<Vec<(usize, Option<String>)>>>;

    fn reporter() -> (Report, Heard) {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        (Arc::new(move |o, e| lock(&h).push((o, e))), heard)
    }

    #[tokio::test]
    async fn a_message_is_delivered_once_every_subscriber_committed_it() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(dir.path()).unwrap();
        let topics = vec!["t".to_string()];
        let mut a = local.subscribe(&topics);
        let mut b = local.subscribe(&topics);
        let (report, heard) = reporter();
        local
            .publish("t", None, Some(b"v"), vec![], 0, 7, report.clone())
            .unwrap();
        let (ma, mb) = (a.recv().await.unwrap(), b.recv().await.unwrap());
        ma.committed();
        assert!(lock(&heard).is_empty(), "one of two subscribers committed");
        mb.committed();
        assert_eq!(*lock(&heard), vec![(7, None)]);
        let err = local
            .publish("other", None, None, vec![], 0, 8, report)
            .unwrap_err();
        assert!(err.contains("no router"), "{err}");
    }

    #[tokio::test]
    async fn a_subscriber_that_stops_fails_the_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(dir.path()).unwrap();
        let topics = vec!["t".to_string()];
        let a = local.subscribe(&topics);
        let mut b = local.subscribe(&topics);
        let (report, heard) = reporter();
        local
            .publish("t", None, Some(b"v"), vec![], 0, 1, report)
            .unwrap();
        drop(a);
        let m = b.recv().await.unwrap();
        m.abandoned("router stopped");
        m.committed();
        assert_eq!(*lock(&heard), vec![(1, Some("router stopped".into()))]);
    }

    #[tokio::test]
    async fn a_router_that_stopped_before_a_publish_keeps_it_from_being_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(dir.path()).unwrap();
        let topics = vec!["t".to_string()];
        let stopped = local.subscribe(&topics);
        let mut running = local.subscribe(&topics);
        drop(stopped);
        let (report, heard) = reporter();
        local
            .publish("t", None, Some(b"v"), vec![], 0, 2, report)
            .unwrap();
        running.recv().await.unwrap().committed();
        let heard = lock(&heard);
        assert_eq!(heard.len(), 1, "{heard:?}");
        assert!(
            heard[0].1.is_some(),
            "one sink having it is not delivered: the stopped router's sink never got it"
        );
    }

    #[test]
    fn control_records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(dir.path()).unwrap();
        local
            .write_control("_sluice_state", "pg", Some(b"{\"a\":1}"))
            .unwrap();
        local
            .write_control("_sluice_state", "gone", Some(b"x"))
            .unwrap();
        local.write_control("_sluice_state", "gone", None).unwrap();
        let again = Local::open(dir.path()).unwrap();
        assert_eq!(
            again.read_control("_sluice_state").unwrap(),
            vec![("pg".to_string(), Some(b"{\"a\":1}".to_vec()))]
        );
        assert!(again.read_control("_sluice_schemas").unwrap().is_empty());
    }
}
