//! What the routing loop reads from: a Kafka consumer, or local mode's in-process feed. Both
//! speak Kafka's terms (topics, partitions, offsets, pause, seek, commit), so the routing loop
//! is one piece of code whichever transport it runs on.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_connect::local::{LocalMessage, Subscription, PARTITION};

use crate::lag::LagContext;

/// The consumer side of a transport.
pub(crate) trait Feed: Send + Sync {
    type Msg<'a>: Message + Send
    where
        Self: 'a;

    /// The next message of a partition that is not paused.
    fn recv(&self) -> impl Future<Output = KafkaResult<Self::Msg<'_>>> + Send;
    fn pause(&self, tpl: &TopicPartitionList) -> KafkaResult<()>;
    fn resume(&self, tpl: &TopicPartitionList) -> KafkaResult<()>;
    /// Reads a partition again from `offset`.
    fn seek(
        &self,
        topic: &str,
        partition: i32,
        offset: Offset,
        timeout: Duration,
    ) -> KafkaResult<()>;
    /// Everything before each partition's offset in `tpl` is in the sink. On Kafka a hint for
    /// where to resume; in local mode what acknowledges the messages to capture.
    fn commit(&self, tpl: &TopicPartitionList) -> KafkaResult<()>;
    fn assignment(&self) -> KafkaResult<TopicPartitionList>;
    /// Partitions a rebalance took away since the last call.
    fn take_revoked(&self) -> Vec<(String, i32)>;
    /// See [`LagContext::take_stalled`].
    fn take_stalled(&self) -> Vec<(String, i32, i64, i64)>;
    /// Whether no message is waiting to be received: the batch collected so far is all there
    /// is for now. Kafka cannot tell (fetches are in flight), so never.
    fn is_idle(&self) -> bool {
        false
    }

    /// Tells the publisher that the message at `offset` will not be acted on as it asked
    /// (local mode: a transaction's commit marker whose in-progress transaction the sink does
    /// not hold, see `provisional.rs`); the message itself is still consumed in order.
    fn refuse(&self, _topic: &str, _offset: i64, _why: &str) {}
}

impl Feed for StreamConsumer<LagContext> {
    type Msg<'a> = rdkafka::message::BorrowedMessage<'a>;

    fn recv(&self) -> impl Future<Output = KafkaResult<Self::Msg<'_>>> + Send {
        StreamConsumer::recv(self)
    }
    fn pause(&self, tpl: &TopicPartitionList) -> KafkaResult<()> {
        Consumer::pause(self, tpl)
    }
    fn resume(&self, tpl: &TopicPartitionList) -> KafkaResult<()> {
        Consumer::resume(self, tpl)
    }
    fn seek(
        &self,
        topic: &str,
        partition: i32,
        offset: Offset,
        timeout: Duration,
    ) -> KafkaResult<()> {
        Consumer::seek(self, topic, partition, offset, timeout)
    }
    fn commit(&self, tpl: &TopicPartitionList) -> KafkaResult<()> {
        Consumer::commit(self, tpl, CommitMode::Async)
    }
    fn assignment(&self) -> KafkaResult<TopicPartitionList> {
        Consumer::assignment(self)
    }
    fn take_revoked(&self) -> Vec<(String, i32)> {
        self.context().take_revoked()
    }
    fn take_stalled(&self) -> Vec<(String, i32, i64, i64)> {
        self.context().take_stalled()
    }
}

/// One topic's messages in local mode: kept from arrival until committed, so a seek can read
/// them again.
struct LocalTopic {
    name: Arc<str>,
    /// Offset of `kept[0]`.
    first: i64,
    kept: VecDeque<(u64, Arc<LocalMessage>)>,
    /// The next offset to hand out.
    cursor: i64,
    paused: bool,
}

impl LocalTopic {
    /// The arrival number of the next message to hand out, if one is kept and not paused.
    fn next_arrival(&self) -> Option<u64> {
        if self.paused {
            return None;
        }
        let i = usize::try_from(self.cursor - self.first).ok()?;
        self.kept.get(i).map(|(arrival, _)| *arrival)
    }
}

struct LocalState {
    topics: Vec<LocalTopic>,
    by_name: HashMap<String, usize>,
    arrivals: u64,
    /// Messages of transactions still in progress at the source: no offset, never paused,
    /// handed out in arrival order among the others and settled as they are.
    lane: VecDeque<(u64, Arc<LocalMessage>)>,
}

/// Local mode's feed: one router's subscription to this process's captures. Each topic is
/// one partition ([`PARTITION`]) whose offsets continue from what the sink stored, so the
/// sink's replay checks work as on Kafka. Messages are handed out in the order they arrived
/// (a paused topic's wait, in order, behind it).
pub(crate) struct LocalFeed {
    rx: tokio::sync::Mutex<Subscription>,
    state: Mutex<LocalState>,
}

impl LocalFeed {
    /// `stored` is each topic's last offset the sink recorded (`-1`: none).
    pub fn new(rx: Subscription, stored: Vec<(String, i64)>) -> LocalFeed {
        let mut by_name = HashMap::new();
        let topics = stored
            .into_iter()
            .enumerate()
            .map(|(i, (name, last))| {
                by_name.insert(name.clone(), i);
                LocalTopic {
                    name: Arc::from(name.as_str()),
                    first: last + 1,
                    kept: VecDeque::new(),
                    cursor: last + 1,
                    paused: false,
                }
            })
            .collect();
        LocalFeed {
            rx: tokio::sync::Mutex::new(rx),
            state: Mutex::new(LocalState {
                topics,
                by_name,
                arrivals: 0,
                lane: VecDeque::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LocalState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The kept message to hand out next, advancing its topic's cursor.
    fn next_kept(&self) -> Option<OwnedMessage> {
        let mut s = self.state();
        let next = s
            .topics
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.next_arrival().map(|a| (i, a)))
            .min_by_key(|(_, a)| *a);
        if let Some(&(arrival, _)) = s.lane.front() {
            if next.is_none_or(|(_, a)| arrival < a) {
                let (_, message) = s.lane.pop_front()?;
                drop(s);
                // Taken: capture may send the next (its in-flight bound).
                message.committed();
                return Some(owned(&message, -1));
            }
        }
        let (i, _) = next?;
        let t = &mut s.topics[i];
        let offset = t.cursor;
        let message = t.kept[(offset - t.first) as usize].1.clone();
        t.cursor += 1;
        Some(owned(&message, offset))
    }

    fn keep(&self, message: Arc<LocalMessage>) {
        let mut s = self.state();
        s.arrivals += 1;
        let arrival = s.arrivals;
        if message.in_progress() {
            s.lane.push_back((arrival, message));
            return;
        }
        let Some(&i) = s.by_name.get(&*message.topic) else {
            // Not subscribed (cannot happen: the transport sends only subscribed topics).
            message.abandoned("the router does not take this topic");
            return;
        };
        s.topics[i].kept.push_back((arrival, message));
    }

    fn set_paused(&self, tpl: &TopicPartitionList, paused: bool) {
        let mut s = self.state();
        for (topic, _) in Self::each(tpl) {
            if let Some(&i) = s.by_name.get(&topic) {
                s.topics[i].paused = paused;
            }
        }
    }

    fn each<'t>(tpl: &'t TopicPartitionList) -> impl Iterator<Item = (String, Option<i64>)> + 't {
        tpl.elements().into_iter().map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.topic().to_string(), offset)
        })
    }
}

fn owned(m: &LocalMessage, offset: i64) -> OwnedMessage {
    let headers = m.headers.iter().fold(
        OwnedHeaders::new_with_capacity(m.headers.len()),
        |acc, (key, value)| {
            acc.insert(Header {
                key,
                value: Some(value.as_slice()),
            })
        },
    );
    OwnedMessage::new(
        m.payload.clone(),
        m.key.clone(),
        m.topic.to_string(),
        Timestamp::CreateTime(m.timestamp_ms),
        PARTITION,
        offset,
        Some(headers),
    )
}

impl Drop for LocalFeed {
    fn drop(&mut self) {
        // What this router never committed is not delivered: capture must not confirm it.
        let s = self.state();
        for t in &s.topics {
            for (_, m) in &t.kept {
                m.abandoned("the router stopped before its sink committed it");
            }
        }
        for (_, m) in &s.lane {
            m.abandoned("the router stopped");
        }
    }
}

impl Feed for LocalFeed {
    type Msg<'a> = OwnedMessage;

    #[allow(clippy::manual_async_fn)]
    fn recv(&self) -> impl Future<Output = KafkaResult<OwnedMessage>> + Send {
        async move {
            loop {
                if let Some(m) = self.next_kept() {
                    return Ok(m);
                }
                let mut rx = self.rx.lock().await;
                match rx.recv().await {
                    Some(m) => {
                        self.keep(m);
                        // Take what else arrived without waiting again.
                        while let Ok(m) = rx.try_recv() {
                            self.keep(m);
                        }
                    }
                    // Every capture stopped: nothing more comes.
                    None => std::future::pending::<()>().await,
                }
            }
        }
    }

    fn pause(&self, tpl: &TopicPartitionList) -> KafkaResult<()> {
        self.set_paused(tpl, true);
        Ok(())
    }

    fn resume(&self, tpl: &TopicPartitionList) -> KafkaResult<()> {
        self.set_paused(tpl, false);
        Ok(())
    }

    fn seek(
        &self,
        topic: &str,
        _partition: i32,
        offset: Offset,
        _timeout: Duration,
    ) -> KafkaResult<()> {
        let mut s = self.state();
        if let (Some(&i), Offset::Offset(o)) = (s.by_name.get(topic), offset) {
            let t = &mut s.topics[i];
            // What was committed is gone; reading again starts at the first kept message.
            t.cursor = o.clamp(t.first, t.first + t.kept.len() as i64);
        }
        Ok(())
    }

    fn commit(&self, tpl: &TopicPartitionList) -> KafkaResult<()> {
        let mut s = self.state();
        for (topic, offset) in Self::each(tpl) {
            let (Some(&i), Some(upto)) = (s.by_name.get(&topic), offset) else {
                continue;
            };
            let t = &mut s.topics[i];
            while t.first < upto {
                let Some((_, m)) = t.kept.pop_front() else {
                    break;
                };
                t.first += 1;
                m.committed();
            }
            t.cursor = t.cursor.max(t.first);
        }
        Ok(())
    }

    fn assignment(&self) -> KafkaResult<TopicPartitionList> {
        let s = self.state();
        let mut tpl = TopicPartitionList::new();
        for t in &s.topics {
            tpl.add_partition(&t.name, PARTITION);
        }
        Ok(tpl)
    }

    fn take_revoked(&self) -> Vec<(String, i32)> {
        Vec::new()
    }

    fn take_stalled(&self) -> Vec<(String, i32, i64, i64)> {
        Vec::new()
    }

    fn refuse(&self, topic: &str, offset: i64, why: &str) {
        let s = self.state();
        if let Some(&i) = s.by_name.get(topic) {
            let t = &s.topics[i];
            if let Some((_, m)) = usize::try_from(offset - t.first)
                .ok()
                .and_then(|i| t.kept.get(i))
            {
                m.abandoned(why);
            }
        }
    }

    fn is_idle(&self) -> bool {
        let s = self.state();
        let deliverable = !s.lane.is_empty() || s.topics.iter().any(|t| t.next_arrival().is_some());
        drop(s);
        !deliverable && self.rx.try_lock().is_ok_and(|rx| rx.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_connect::local::{Local, Report};

    #[tokio::test]
    async fn offsets_go_on_from_the_sink_a_seek_reads_again_and_a_commit_delivers() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(dir.path()).unwrap();
        let topics = vec!["a".to_string(), "b".to_string()];
        let rx = local.subscribe(&topics);
        let feed = LocalFeed::new(rx, vec![("a".into(), 41), ("b".into(), -1)]);
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let d = delivered.clone();
        let report: Report = Arc::new(move |o, e| d.lock().unwrap().push((o, e)));
        for (n, topic) in ["a", "b", "a"].iter().enumerate() {
            local
                .publish(topic, None, Some(b"x"), vec![], 0, n, report.clone())
                .unwrap();
        }
        let got: Vec<(String, i64)> = [
            feed.recv().await.unwrap(),
            feed.recv().await.unwrap(),
            feed.recv().await.unwrap(),
        ]
        .iter()
        .map(|m| (m.topic().to_string(), m.offset()))
        .collect();
        assert_eq!(got, [("a".into(), 42), ("b".into(), 0), ("a".into(), 43)]);
        feed.seek("a", PARTITION, Offset::Offset(42), Duration::ZERO)
            .unwrap();
        assert_eq!(feed.recv().await.unwrap().offset(), 42, "read again");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("a", PARTITION, Offset::Offset(43))
            .unwrap();
        feed.commit(&tpl).unwrap();
        assert_eq!(*delivered.lock().unwrap(), vec![(0, None)]);
        // A paused topic hands out nothing; the others go on.
        let mut a = TopicPartitionList::new();
        a.add_partition("a", PARTITION);
        feed.pause(&a).unwrap();
        local
            .publish("b", None, Some(b"y"), vec![], 0, 3, report.clone())
            .unwrap();
        let m = feed.recv().await.unwrap();
        assert_eq!((m.topic(), m.offset()), ("b", 1));
        feed.resume(&a).unwrap();
        assert_eq!(feed.recv().await.unwrap().offset(), 43);
        drop(feed);
        let heard = delivered.lock().unwrap();
        assert!(
            heard.iter().filter(|(_, e)| e.is_some()).count() == 3,
            "what was not committed is reported undelivered when the router stops: {heard:?}"
        );
    }
}
