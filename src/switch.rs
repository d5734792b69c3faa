//! `sluice switch --from OLD --to NEW`: moves a stopped deployment between Kafka mode and
//! local mode without a re-snapshot and without losing or doubling a change.
//!
//! What each mode keeps elsewhere is carried over: capture state (snapshot progress, source
//! epoch, binlog position) and schemas between the state directory and the control topics, and
//! each sink's applied positions between local mode's progress row (partition -1) and the
//! Kafka partitions' rows. The slot (or binlog checkpoint) stays where it is: the new mode
//! reads again from there, and the positions carried over make the sink skip what it has.
//!
//! - **Kafka → local** needs every change in Kafka applied first: capture's slot is confirmed
//!   once Kafka has a change, so what no router applied yet would not come again. The switch
//!   checks each partition's end against the offset each sink stored and refuses with the lag.
//! - **Local → Kafka**: the sink has everything local mode confirmed; the table topics are
//!   created and each partition's row starts at local mode's position.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_connect::local::{Local, PARTITION};
use sluice_connect::transport::read_to_end;
use sluice_schemas::Position;
use sluice_sinks::{AnySink, Sink};

use crate::config::{Config, Mode, SourceConfig};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// Switches the deployment of `from` (stopped) to `to`'s mode; returns what it did.
pub async fn switch(from: &Config, to: &Config) -> anyhow::Result<String> {
    let (kafka, local) = match (from.mode(), to.mode()) {
        (Mode::Kafka, Mode::Local) => (from, to),
        (Mode::Local, Mode::Kafka) => (to, from),
        _ => bail!(
            "both configs run in the same mode; `switch` moves between Kafka mode (a [kafka] \
             section) and local mode (none)"
        ),
    };
    same_deployment(kafka, local)?;
    captures_stopped(from).await?;
    let state_dir = local.local_state_dir();
    let store = Local::open(&state_dir).map_err(anyhow::Error::msg)?;
    let topics = local.router_topics();
    let mut sinks = connect_sinks(to).await?;
    let mut done = Vec::new();
    if from.mode() == Mode::Kafka {
        // Every change in Kafka must be in every sink: the slot will not send it again.
        let client = kafka.kafka_client();
        let ends = partition_ends(&client, &topics).await?;
        for (name, sink) in &mut sinks {
            for topic in &topics {
                let mut highest: Option<Position> = None;
                for &(partition, end) in ends.iter().filter(|(t, _)| t == topic).map(|(_, e)| e) {
                    let stored = sink.progress(topic, partition).await?;
                    let applied = stored.as_ref().map_or(-1, |p| p.offset);
                    if end > 0 && applied < end - 1 {
                        bail!(
                            "sink {name} has not applied everything in Kafka yet: {topic} \
                             partition {partition} is at offset {applied} of {end}. Run the \
                             router alone (`sluice route --config <Kafka config>`) until its lag \
                             is 0, stop it, and switch again; capture must stay stopped"
                        );
                    }
                    if let Some(p) = stored.and_then(|p| p.position) {
                        highest = highest.max(Some(p));
                    }
                }
                if let Some(p) = highest {
                    sink.raise_position(topic, PARTITION, &p).await?;
                }
            }
            done.push(format!(
                "sink {name}: local mode starts after what Kafka mode applied"
            ));
        }
        let copied = tokio::task::spawn_blocking({
            let (client, store) = (client.clone(), store.clone());
            let (from_k, to_k) = (kafka.kafka.clone(), local.kafka.clone());
            let sources: BTreeSet<String> = local.sources.keys().cloned().collect();
            move || -> anyhow::Result<usize> {
                let mut n = 0;
                for (key, value) in read_to_end(&client, &from_k.state_topic, KAFKA_TIMEOUT)
                    .map_err(anyhow::Error::msg)?
                {
                    if sources.contains(&key) {
                        store
                            .write_control(&to_k.state_topic, &key, value.as_deref())
                            .map_err(anyhow::Error::msg)?;
                        n += 1;
                    }
                }
                for (key, value) in read_to_end(&client, &from_k.schema_topic, KAFKA_TIMEOUT)
                    .map_err(anyhow::Error::msg)?
                {
                    store
                        .write_control(&to_k.schema_topic, &key, value.as_deref())
                        .map_err(anyhow::Error::msg)?;
                }
                Ok(n)
            }
        })
        .await??;
        done.push(format!(
            "capture state of {copied} source(s) and the schemas copied into {}",
            state_dir.display()
        ));
    } else {
        let client = kafka.kafka_client();
        create_topics(kafka, &topics).await?;
        let ends = partition_ends(&client, &topics).await?;
        for (name, sink) in &mut sinks {
            for topic in &topics {
                let Some(position) = sink
                    .progress(topic, PARTITION)
                    .await?
                    .and_then(|p| p.position)
                else {
                    continue;
                };
                for (_, (partition, _)) in ends.iter().filter(|(t, _)| t == topic) {
                    sink.raise_position(topic, *partition, &position).await?;
                }
            }
            done.push(format!(
                "sink {name}: Kafka mode starts after what local mode applied"
            ));
        }
        let copied = tokio::task::spawn_blocking({
            let (client, store) = (client.clone(), store.clone());
            let (from_k, to_k) = (local.kafka.clone(), kafka.kafka.clone());
            let sources: BTreeSet<String> = kafka.sources.keys().cloned().collect();
            move || -> anyhow::Result<usize> {
                let producer: BaseProducer = client
                    .clone()
                    .set("enable.idempotence", "true")
                    .create()
                    .context("cannot create a Kafka producer")?;
                let mut n = 0;
                let state = store
                    .read_control(&from_k.state_topic)
                    .map_err(anyhow::Error::msg)?;
                for (key, value) in state.iter().filter(|(k, _)| sources.contains(k)) {
                    send(&producer, &to_k.state_topic, key, value.as_deref())?;
                    n += 1;
                }
                for (key, value) in store
                    .read_control(&from_k.schema_topic)
                    .map_err(anyhow::Error::msg)?
                {
                    send(&producer, &to_k.schema_topic, &key, value.as_deref())?;
                }
                producer
                    .flush(KAFKA_TIMEOUT)
                    .context("Kafka did not acknowledge the copied state")?;
                Ok(n)
            }
        })
        .await??;
        done.push(format!(
            "capture state of {copied} source(s) and the schemas copied into {} and {}",
            kafka.kafka.state_topic, kafka.kafka.schema_topic
        ));
    }
    done.push(format!(
        "start the new mode with `sluice {}`",
        match to.mode() {
            Mode::Kafka => "capture` and `sluice route` (or `sluice run`)",
            Mode::Local => "run",
        }
    ));
    Ok(done.join("\n"))
}

/// The two configs must describe one deployment: the same sources (slots), sinks, group and
/// topic names.
fn same_deployment(kafka: &Config, local: &Config) -> anyhow::Result<()> {
    let names = |c: &Config| c.sources.keys().cloned().collect::<Vec<_>>();
    if names(kafka) != names(local) {
        bail!(
            "the configs capture different sources ({:?} and {:?}); switch one deployment at a time",
            names(kafka),
            names(local)
        );
    }
    let (kt, lt) = (kafka.router_topics(), local.router_topics());
    if kt != lt {
        bail!(
            "the table topics differ between the configs ({kt:?} in Kafka mode, {lt:?} in local \
             mode); the sink records progress by topic name, so they must match: give each \
             source the same sources.<name>.topic_prefix in both"
        );
    }
    let group = |c: &Config| c.router.as_ref().map(|r| r.group_id.clone());
    if group(kafka) != group(local) {
        bail!(
            "router.group_id differs between the configs; the sink keys its progress by it, so \
             use the same in both"
        );
    }
    Ok(())
}

/// Refuses while a PostgreSQL source's slot is in use: capture must be stopped.
async fn captures_stopped(config: &Config) -> anyhow::Result<()> {
    for (name, source) in &config.sources {
        let SourceConfig::Postgres(pg) = source else {
            continue; // a binlog reader holds nothing the server shows reliably
        };
        let db = crate::verify::connector(&pg.url, &pg.tls, "sources", name)?;
        let (client, task) = db
            .connect()
            .await
            .with_context(|| format!("connecting to source {name}"))?;
        let active: Option<bool> = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&pg.slot],
            )
            .await?
            .map(|r| r.get(0));
        task.abort();
        if active == Some(true) {
            bail!(
                "slot {} of source {name} is in use: stop Sluice (capture) before switching",
                pg.slot
            );
        }
    }
    Ok(())
}

/// The router's sinks of `config` (with `also_sinks`), connected.
async fn connect_sinks(config: &Config) -> anyhow::Result<Vec<(String, AnySink)>> {
    let router = config
        .router
        .as_ref()
        .context("the config has no [router] section")?;
    let mut out = Vec::new();
    for name in std::iter::once(&router.sink).chain(&router.also_sinks) {
        let sink_config = config
            .sinks
            .get(name)
            .with_context(|| format!("router: sink {name} is not defined"))?;
        let sink = crate::commands::connect_sink(name, &router.group_id, sink_config).await?;
        out.push((name.clone(), sink));
    }
    Ok(out)
}

/// Per topic, each partition and its end offset.
async fn partition_ends(
    client: &rdkafka::ClientConfig,
    topics: &[String],
) -> anyhow::Result<Vec<(String, (i32, i64))>> {
    let (client, topics) = (client.clone(), topics.to_vec());
    tokio::task::spawn_blocking(move || partition_ends_blocking(&client, &topics)).await?
}

fn partition_ends_blocking(
    client: &rdkafka::ClientConfig,
    topics: &[String],
) -> anyhow::Result<Vec<(String, (i32, i64))>> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", "sluice-switch")
        .create()
        .context("cannot create a Kafka consumer")?;
    let mut out = Vec::new();
    for topic in topics {
        // A topic just created may list no partitions for a moment.
        let mut partitions = 0;
        for _ in 0..50 {
            let metadata = consumer
                .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
                .with_context(|| format!("metadata of {topic}"))?;
            partitions = metadata
                .topics()
                .first()
                .filter(|t| t.error().is_none())
                .map_or(0, |t| t.partitions().len() as i32);
            if partitions > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for partition in 0..partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, KAFKA_TIMEOUT)
                .with_context(|| format!("end of {topic} partition {partition}"))?;
            out.push((topic.clone(), (partition, high)));
        }
    }
    Ok(out)
}

/// Creates the table topics (and the compacted control topics) Kafka mode will use.
async fn create_topics(config: &Config, topics: &[String]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = config.kafka_client().create()?;
    let k = &config.kafka;
    let replication = || TopicReplication::Fixed(k.replication_factor);
    let mut new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, k.partitions, replication()))
        .collect();
    for control in [&k.state_topic, &k.schema_topic] {
        new.push(NewTopic::new(control, 1, replication()).set("cleanup.policy", "compact"));
    }
    let opts = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}

fn send(
    producer: &BaseProducer,
    topic: &str,
    key: &str,
    value: Option<&[u8]>,
) -> anyhow::Result<()> {
    let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).key(key);
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer
        .send(record)
        .map_err(|(e, _)| anyhow::anyhow!("cannot write to {topic}: {e}"))
}
