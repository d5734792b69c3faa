//! What `sluice run`, `sluice capture` and `sluice route` start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_capture::source::Source;
use sluice_capture::{Capture, PublisherSettings};
use sluice_router::{BatchSettings, Mapper, Router, RouterSettings};
use sluice_sinks::mysql::MysqlSink;
use sluice_sinks::postgres::PostgresSink;
use sluice_sinks::AnySink;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use sluice_connect::transport::Transport;

use crate::config::{with_source, Config, Mode, SinkConfig};
use crate::telemetry::{self, Health};

/// Which components a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Components {
    pub capture: bool,
    pub router: bool,
}

/// How long the start-up check waits for the brokers to answer (or refuse).
const BROKER_CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the chosen components until SIGTERM/SIGINT (or until one fails definitively, which
/// stops the others). Returns an error when any component failed.
pub async fn run(config: Config, components: Components) -> anyhow::Result<()> {
    let mode = config.mode();
    if mode == Mode::Local
        && components
            != (Components {
                capture: true,
                router: true,
            })
    {
        anyhow::bail!(
            "this config has no [kafka] section, so it runs in local mode: capture and router \
             in one process, with `sluice run`. To run them apart, add [kafka]"
        );
    }
    let transport = config.transport().map_err(anyhow::Error::msg)?;
    if let Transport::Local(local) = &transport {
        info!(state_dir = %local.dir().display(), "local mode: no broker; capture state, schemas and dead letters are kept in the state directory");
    }
    let handle = telemetry::init_metrics()?;
    let health = Arc::new(Health::new(config.observability.stall_timeout()));
    let shutdown = CancellationToken::new();
    // Routers stop on this. In local mode only once every capture stopped: a capture
    // draining on shutdown waits for its changes to reach the sinks.
    let router_shutdown = match mode {
        Mode::Kafka => shutdown.clone(),
        Mode::Local => CancellationToken::new(),
    };
    let (captures_alive, mut captures_gone) = tokio::sync::mpsc::channel::<()>(1);
    let registry = config
        .schemas
        .registry()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Each component's result, with its kind and name (the source, or the router's sink).
    let mut tasks: JoinSet<((&'static str, String), anyhow::Result<()>)> = JoinSet::new();
    // The components still running, by task: named when one does not drain in time.
    let mut running: BTreeMap<tokio::task::Id, String> = BTreeMap::new();

    // The endpoints outlive the components: after a failure they serve it until it was read.
    let http_stop = CancellationToken::new();
    let http = tokio::spawn({
        let listen = config.observability.listen.clone();
        let (health, http_stop) = (health.clone(), http_stop.clone());
        async move { telemetry::serve(&listen, handle, health, http_stop).await }
    });

    // Credentials and certificates the brokers refuse stop the process with what to fix
    // (otherwise every client would retry forever); a broker that is down is waited for.
    if mode == Mode::Kafka {
        let check = tasks.spawn_blocking({
            let (client, shutdown) = (config.kafka_client(), shutdown.clone());
            move || {
                let checked = crate::kafka::check_brokers(&client, BROKER_CHECK_TIMEOUT, || {
                    shutdown.is_cancelled()
                });
                (
                    ("kafka", "brokers".to_string()),
                    checked.map_err(anyhow::Error::msg),
                )
            }
        });
        running.insert(check.id(), "kafka brokers check".to_string());
    }

    // Each capture's settings (and its place in /readyz, before the routers'), made now; the
    // captures start after the routers subscribed.
    let mut captures = Vec::new();
    if components.capture {
        if config.sources.is_empty() {
            anyhow::bail!("`capture` needs at least one [sources.<name>] section");
        }
        for (name, source) in &config.sources {
            let settings = PublisherSettings {
                topic_prefix: config.source_topic_prefix(name),
                legacy_topic_prefix: source
                    .topic_prefix()
                    .is_none()
                    .then(|| config.kafka.topic_prefix.clone()),
                schema_topic: config.kafka.schema_topic.clone(),
                state_topic: config.kafka.state_topic.clone(),
                partitions: config.kafka.partitions,
                replication_factor: config.kafka.replication_factor,
                tombstones: config.kafka.tombstones && mode == Mode::Kafka,
                max_in_flight: match (&config.local, mode) {
                    (Some(local), Mode::Local) => local.max_in_flight,
                    _ => config.kafka.max_in_flight,
                },
                source: name.clone(),
                drain_timeout: config.shutdown.drain_timeout(),
                liveness: health.component(
                    &format!("capture {name}"),
                    match mode {
                        Mode::Kafka => &["source", "broker"],
                        Mode::Local => &["source"],
                    },
                ),
                policy: config.schemas.policy(),
                registry: registry.clone(),
                // Only a PostgreSQL sink holds one open: with none, handing a transaction
                // over while in progress would be work for nothing.
                apply_in_progress: mode == Mode::Local
                    && config.local.as_ref().is_none_or(|l| l.apply_in_progress)
                    && config.router.as_ref().is_some_and(|r| {
                        std::iter::once(&r.sink)
                            .chain(&r.also_sinks)
                            .any(|s| matches!(config.sinks.get(s), Some(SinkConfig::Postgres(_))))
                    }),
            };
            captures.push((name.clone(), source.clone(), settings));
        }
    }

    // The routers' tasks, spawned after the captures'.
    let mut routers = Vec::new();
    if components.router {
        let router = config
            .router
            .clone()
            .context("`route` needs a [router] section")?;
        // Local mode feeds every sink named from the same captures, each by its own router.
        let sinks: Vec<String> = match mode {
            Mode::Kafka => vec![router.sink.clone()],
            Mode::Local => std::iter::once(router.sink.clone())
                .chain(router.also_sinks.iter().cloned())
                .collect(),
        };
        for sink_name in sinks {
            let sink_config = config
                .sinks
                .get(&sink_name)
                .cloned()
                .with_context(|| format!("router: sink \"{sink_name}\" names no sink"))?;
            let component = if sink_name == router.sink {
                "router".to_string()
            } else {
                format!("router {sink_name}")
            };
            let settings = RouterSettings {
                group_id: router.group_id.clone(),
                instance_id: config.router_instance_id(),
                assignment_strategy: router.assignment_strategy.clone(),
                topics: config.router_topics(),
                legacy_topics: config.legacy_topics(),
                schema_topic: config.kafka.schema_topic.clone(),
                registry: registry.clone(),
                dead_letter_topic: router.dead_letter_topic.clone(),
                partitions: config.kafka.partitions,
                replication_factor: config.kafka.replication_factor,
                batch: BatchSettings {
                    max_rows: router.batch.max_rows,
                    max_bytes: router.batch.max_bytes,
                    max_delay: Duration::from_millis(router.batch.max_delay_ms),
                },
                blocked_retry: Duration::from_millis(router.blocked_retry_ms),
                foreign_key_wait: Duration::from_millis(router.foreign_key_wait_ms),
                fetch_stall_recovery: router.fetch_stall_recovery,
                sink_name: sink_name.clone(),
                leave_timeout: config.shutdown.drain_timeout(),
                liveness: health.component(
                    &component,
                    match mode {
                        Mode::Kafka => &["sink", "broker"],
                        Mode::Local => &["sink"],
                    },
                ),
            };
            // Invalid schemes stop the start with every problem listed: nothing runs yet to
            // fall back on.
            let mapper = match config.schemes_dir() {
                None => Mapper::identity(&sink_name),
                Some(dir) => Mapper::load(
                    &dir,
                    &sink_name,
                    Config::hmac_key().map_err(|e| anyhow::anyhow!(e))?,
                    Duration::from_millis(router.schemes_reload_ms),
                )
                .map_err(|e| anyhow::anyhow!("mapping schemes in {}:\n{e}", dir.display()))?,
            };
            // In local mode the router subscribes now, before any capture starts publishing.
            let subscription = transport.local().map(|l| l.subscribe(&settings.topics));
            let (shutdown, group_id) = (router_shutdown.clone(), router.group_id.clone());
            let transport = transport.clone();
            routers.push((format!("router {sink_name}"), async move {
                let password = Config::env_password("sinks", &sink_name);
                let result = async {
                    let sink = connect_sink_with_retry(
                        &sink_name,
                        &group_id,
                        &sink_config,
                        password,
                        &shutdown,
                    )
                    .await?;
                    Router::new(transport, settings, sink)
                        .with_schemes(mapper)
                        .with_subscription(subscription)
                        .run(shutdown)
                        .await?;
                    Ok(())
                }
                .await;
                (("router", sink_name), result)
            }));
        }
    }

    // Captures start first, then the routers (as before local mode: a router that joins its
    // group while a capture fails at once is stopped mid-rebalance, and librdkafka's close
    // can then take past the drain timeout). In local mode the routers subscribed above.
    for (name, source, settings) in captures {
        let password = Config::env_password("sources", &name);
        let (transport, label) = (transport.clone(), ("capture", name.clone()));
        let (shutdown, alive) = (shutdown.clone(), captures_alive.clone());
        with_source!(source, s => {
            let capture = Capture::new(&name, s, transport, settings, password);
            let task = tasks.spawn(async move {
                let _alive = alive;
                (
                    label,
                    Source::run(capture, shutdown).await.map_err(anyhow::Error::from),
                )
            });
            running.insert(task.id(), format!("capture {name}"));
        });
    }

    if let (true, Some(v)) = (components.router, config.verify.clone()) {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        info!(
            interval_s = ?v.interval_s,
            schedule = ?v.schedule,
            "verify runs on a schedule ([verify])"
        );
        let task = tasks.spawn(async move {
            crate::verify::scheduled(config, v, shutdown).await;
            (("verify", "schedule".to_string()), Ok(()))
        });
        running.insert(task.id(), "verify schedule".to_string());
    }

    for (label, router) in routers {
        let task = tasks.spawn(router);
        running.insert(task.id(), label);
    }

    drop(captures_alive);
    if mode == Mode::Local {
        let (shutdown, router_shutdown) = (shutdown.clone(), router_shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            // Every capture has drained (its changes reached the sinks) or given up.
            while captures_gone.recv().await.is_some() {}
            router_shutdown.cancel();
        });
    }

    let interrupted = CancellationToken::new();
    let signals = tokio::spawn({
        let (shutdown, interrupted) = (shutdown.clone(), interrupted.clone());
        async move {
            wait_for_signal().await;
            info!("shutdown requested; draining");
            interrupted.cancel();
            shutdown.cancel();
        }
    });

    // After a shutdown request, components get `drain_timeout` (plus a moment for their own
    // timeouts to fire) to finish; then the process gives up on them and exits non-zero.
    let give_up_after = config.shutdown.drain_timeout() + Duration::from_secs(5);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut failed = Vec::new();
    loop {
        let joined = match deadline {
            None => tokio::select! {
                joined = tasks.join_next_with_id() => joined,
                _ = shutdown.cancelled() => {
                    deadline = Some(tokio::time::Instant::now() + give_up_after);
                    continue;
                }
            },
            Some(at) => match tokio::time::timeout_at(at, tasks.join_next_with_id()).await {
                Ok(joined) => joined,
                Err(_) => {
                    let still = running.values().cloned().collect::<Vec<_>>().join(", ");
                    error!(timeout = ?give_up_after, running = %still, "components did not drain in time; exiting");
                    failed.push(format!(
                        "did not drain within {give_up_after:?} (shutdown.drain_timeout_ms): {still}"
                    ));
                    tasks.abort_all();
                    break;
                }
            },
        };
        let Some(joined) = joined else { break };
        let ((kind, name), result) = match joined {
            Ok((id, done)) => {
                running.remove(&id);
                done
            }
            // Aborted below, after the brokers refused Sluice.
            Err(e) if e.is_cancelled() => {
                running.remove(&e.id());
                continue;
            }
            Err(e) => return Err(e).context("a component panicked"),
        };
        if let Err(e) = result {
            error!(component = %format!("{kind} {name}"), error = %format!("{e:#}"), "component failed; stopping the others");
            metrics::gauge!(telemetry::COMPONENT_FAILED, "component" => kind, "name" => name.clone())
                .set(1.0);
            health.failed();
            failed.push(format!("{kind} {name}: {e:#}"));
            shutdown.cancel();
            if kind == "kafka" {
                // The brokers refuse every client: nothing was published or consumed, so
                // there is nothing to drain, and clients stuck in their own timeouts would
                // only delay the exit. (Stopping mid-start is as safe as a crash.)
                tasks.abort_all();
            }
        }
    }
    shutdown.cancel();
    if !failed.is_empty() && !interrupted.is_cancelled() {
        // A process that fails at once on every start would otherwise never be scraped with
        // the failure: wait for one read of /metrics (or the linger's end, or a signal).
        let linger = config.shutdown.linger_on_failure();
        info!(timeout = ?linger, "serving the failure on /metrics until it is read, then exiting");
        tokio::select! {
            _ = health.failure_scraped() => {}
            _ = tokio::time::sleep(linger) => {}
            _ = interrupted.cancelled() => {}
        }
    }
    signals.abort();
    http_stop.cancel();
    let _ = http.await;
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(failed.join("\n"))
    }
}

/// Connects to a sink once (for commands that are not long-running).
pub(crate) async fn connect_sink(
    name: &str,
    group: &str,
    config: &SinkConfig,
) -> anyhow::Result<AnySink> {
    let password = Config::env_password("sinks", name);
    Ok(match config {
        SinkConfig::Postgres(pg) => {
            AnySink::Postgres(PostgresSink::connect(name, group, pg.clone(), password).await?)
        }
        SinkConfig::Mysql(my) => {
            AnySink::Mysql(MysqlSink::connect(name, group, my.clone(), password).await?)
        }
    })
}

async fn connect_sink_with_retry(
    name: &str,
    group: &str,
    config: &SinkConfig,
    password: Option<String>,
    shutdown: &CancellationToken,
) -> anyhow::Result<AnySink> {
    let mut backoff = sluice_schemas::liveness::Backoff::default();
    loop {
        let connected = match config {
            SinkConfig::Postgres(pg) => {
                PostgresSink::connect(name, group, pg.clone(), password.clone())
                    .await
                    .map(AnySink::Postgres)
            }
            SinkConfig::Mysql(my) => MysqlSink::connect(name, group, my.clone(), password.clone())
                .await
                .map(AnySink::Mysql),
        };
        match connected {
            Ok(sink) => return Ok(sink),
            Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                let wait = backoff.next_wait();
                tracing::warn!(sink = name, error = %e, retry_in = ?wait, "sink unavailable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(e.into()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Replaces `source`'s capture state record with one that begins a new source epoch and has
/// every configured table to read again after a truncate: its next start clears each table at
/// the sink and snapshots it anew, and everything it publishes sorts above what the sink has
/// (see `sluice_capture::epoch`).
pub fn reset_state(config: &Config, source: &str) -> anyhow::Result<String> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let Some(source_config) = config.sources.get(source) else {
        anyhow::bail!(
            "no source `{source}` in the config (sources: {})",
            config
                .sources
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let epoch = serde_json::json!({ "started_ms": started_ms });
    let record = with_source!(source_config, s => s.reset_state(epoch));
    let topic = &config.kafka.state_topic;
    if config.mode() == Mode::Local {
        let dir = config.local_state_dir();
        let local = sluice_connect::local::Local::open(&dir).map_err(anyhow::Error::msg)?;
        local
            .write_control(topic, source, Some(record.to_string().as_bytes()))
            .map_err(anyhow::Error::msg)?;
        return Ok(format!(
            "source {source}: its capture state in {} is reset; its next start clears each \
             table at the sink and reads it anew, in a new source epoch",
            dir.display()
        ));
    }
    let producer: BaseProducer = config
        .kafka_client()
        .set("enable.idempotence", "true")
        .create()
        .context("cannot create a Kafka producer")?;
    let payload = record.to_string();
    producer
        .send(BaseRecord::to(topic).key(source).payload(&payload))
        .map_err(|(e, _)| anyhow::anyhow!("cannot write to {topic}: {e}"))?;
    producer.flush(Duration::from_secs(30)).with_context(|| {
        format!("the new state of source {source} in {topic} was not acknowledged")
    })?;
    Ok(format!(
        "source {source}: its capture state in {topic} is reset; its next start clears each \
         table at the sink and reads it anew, in a new source epoch"
    ))
}
