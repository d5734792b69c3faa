//! Reading Sluice's compacted control topics (schemas, capture state) to their end.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// A record of a control topic: its key and its value (`None` for a tombstone).
pub type Record = (String, Option<Vec<u8>>);

/// Every `(key, value)` record of partition 0 of `topic` up to its current end, oldest first.
/// Records without a key are skipped; a tombstone has `None` as value. Blocking: call from
/// `spawn_blocking`.
pub fn read_to_end(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Record>, String> {
    let mut config = config.clone();
    config
        .set("group.id", "sluice-control-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, timeout)
        .map_err(|e| format!("watermarks of {topic}: {e}"))?;
    let mut out = Vec::new();
    if high <= low {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let mut next = low;
    while next < high {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out reading {topic} (at offset {next} of {high})"
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                next = msg.offset() + 1;
                if let Some(k) = msg.key() {
                    out.push((
                        String::from_utf8_lossy(k).into_owned(),
                        msg.payload().map(<[u8]>::to_vec),
                    ));
                }
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            None => {}
        }
    }
    Ok(out)
}
