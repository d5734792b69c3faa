//! What the router collects between two applies: the changes of a batch, the consumed
//! offsets the sink records with them, and the messages they came from (for the dead-letter
//! topic).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::Message;
use sluice_sinks::{Batch, Origin, SinkChange};

/// A consumed message as it was, kept while its changes wait in the batch: if the sink refuses
/// one of them, the message goes to the dead-letter topic unchanged.
pub(crate) struct Raw {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl Raw {
    pub fn of(msg: &impl Message, topic: Arc<str>) -> Raw {
        Raw {
            topic,
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
        }
    }
}

/// Changes collected for one apply, with what the sink records beside them.
pub(crate) struct Pending {
    pub batch: Batch,
    /// The messages the batch's changes came from, by topic, partition and offset.
    pub raw: HashMap<(Arc<str>, i32, i64), Raw>,
    /// Per partition, the last offset consumed.
    pub consumed: HashMap<(Arc<str>, i32), i64>,
    pub bytes: usize,
    pub last_source_ts_ms: i64,
}

impl Pending {
    pub fn new() -> Pending {
        Pending {
            batch: Batch::default(),
            raw: HashMap::new(),
            consumed: HashMap::new(),
            bytes: 0,
            last_source_ts_ms: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.consumed.is_empty()
    }
}

/// Moves every change, consumed offset and kept message of `partitions` from one pending
/// batch to the end of another, in order.
pub(crate) fn move_partitions(
    from: &mut Pending,
    to: &mut Pending,
    partitions: &HashSet<(Arc<str>, i32)>,
) {
    let (moved, kept): (Vec<SinkChange>, Vec<SinkChange>) = std::mem::take(&mut from.batch.changes)
        .into_iter()
        .partition(|c| partitions.contains(&(c.origin.topic.clone(), c.origin.partition)));
    from.batch.changes = kept;
    to.batch.changes.extend(moved);
    for p in partitions {
        if let Some(offset) = from.consumed.remove(p) {
            let entry = to.consumed.entry(p.clone()).or_insert(offset);
            *entry = (*entry).max(offset);
        }
    }
    let raws: Vec<_> = from
        .raw
        .keys()
        .filter(|(t, part, _)| partitions.contains(&(t.clone(), *part)))
        .cloned()
        .collect();
    for k in raws {
        if let Some(r) = from.raw.remove(&k) {
            to.raw.insert(k, r);
        }
    }
}

/// A copy of a consumed message that outlives the consumer's buffer.
pub(crate) fn owned(msg: &impl Message) -> OwnedMessage {
    let headers = msg.headers().map(|hs| {
        hs.iter().fold(OwnedHeaders::new(), |acc, h| {
            acc.insert(Header {
                key: h.key,
                value: h.value,
            })
        })
    });
    OwnedMessage::new(
        msg.payload().map(<[u8]>::to_vec),
        msg.key().map(<[u8]>::to_vec),
        msg.topic().to_string(),
        msg.timestamp(),
        msg.partition(),
        msg.offset(),
        headers,
    )
}

/// The consumed offsets of a batch, as the sink records them.
pub(crate) fn consumed_list(consumed: &HashMap<(Arc<str>, i32), i64>) -> Vec<Origin> {
    consumed
        .iter()
        .map(|((topic, partition), offset)| Origin {
            topic: topic.clone(),
            partition: *partition,
            offset: *offset,
        })
        .collect()
}
