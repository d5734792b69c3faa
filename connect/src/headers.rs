//! The headers Sluice puts on a change message, read in one place: its [`Position`] and, for a
//! change published to every partition of its topic (a truncate), the barrier's width.

use rdkafka::message::{Headers, Message};
use sluice_schemas::event::{BARRIER_HEADER, POSITION_HEADER};
use sluice_schemas::Position;

/// The value of the header `key` of `msg`, when it has one.
fn header<'m>(msg: &'m impl Message, key: &str) -> Option<&'m [u8]> {
    msg.headers()?.iter().find(|h| h.key == key)?.value
}

/// The change's position ([`POSITION_HEADER`]); `None` when it is missing or malformed.
pub fn position(msg: &impl Message) -> Option<Position> {
    Position::from_header(header(msg, POSITION_HEADER)?)
}

/// How many partitions a barrier change was published to ([`BARRIER_HEADER`]); `None` for an
/// ordinary change.
pub fn barrier_width(msg: &impl Message) -> Option<i32> {
    std::str::from_utf8(header(msg, BARRIER_HEADER)?)
        .ok()?
        .parse()
        .ok()
}

/// The header of a message of a transaction still in progress at the source (local mode
/// only; such messages take no offset): a change of it, or the rollback of it or of one of
/// its subtransactions. Its value is an [`InProgress`] as JSON.
pub const PROVISIONAL_HEADER: &str = "sluice.provisional";

/// The header of a transaction's commit marker (local mode only), published on each topic it
/// changed once it committed, when its changes went out while it was in progress. Its value
/// is a [`CommitMarker`] as JSON; the marker takes an offset and has no payload.
pub const PROVISIONAL_COMMIT_HEADER: &str = "sluice.provisional.commit";

/// What a [`PROVISIONAL_HEADER`] says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InProgress {
    /// The capturing source.
    pub source: String,
    /// The capture session (a capture that restarted streams in-progress transactions again
    /// from their start, under a new session).
    pub session: u64,
    /// The top-level transaction.
    pub xid: u32,
    /// The subtransaction the change belongs to or that was rolled back (`xid` itself for the
    /// transaction).
    pub subxid: u32,
    /// A rollback (no payload) rather than a change.
    #[serde(default)]
    pub abort: bool,
}

/// What a [`PROVISIONAL_COMMIT_HEADER`] says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitMarker {
    pub source: String,
    pub session: u64,
    pub xid: u32,
    /// Every topic a marker of this transaction goes to.
    pub topics: Vec<String>,
}

/// A message's [`InProgress`], when it has one.
pub fn in_progress(msg: &impl Message) -> Option<InProgress> {
    serde_json::from_slice(header(msg, PROVISIONAL_HEADER)?).ok()
}

/// A message's [`CommitMarker`], when it is one.
pub fn commit_marker(msg: &impl Message) -> Option<CommitMarker> {
    serde_json::from_slice(header(msg, PROVISIONAL_COMMIT_HEADER)?).ok()
}
