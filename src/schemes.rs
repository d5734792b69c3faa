//! `sluice schemes generate` and `sluice schemes check`: mapping schemes from the live
//! sources, and their validation against the sources' tables and the sink's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use sluice_connect::transport::{read_to_end, TopicSchemas, Transport};
use sluice_schemas::avro::EnvelopeDecoder;
use sluice_schemas::scheme::{identity, scheme_files, Scheme, SchemeError};
use sluice_schemas::{TableId, TableSchema};
use sluice_sinks::mysql::MysqlSink;
use sluice_sinks::postgres::PostgresSink;
use sluice_sinks::AnySink;

use crate::config::{with_source, Config, SinkConfig};
use sluice_capture::source::Source;

/// The live schema of every captured table, by table, with the source it comes from.
async fn describe_sources(
    config: &Config,
) -> anyhow::Result<BTreeMap<TableId, (String, Arc<TableSchema>)>> {
    let mut out = BTreeMap::new();
    for (name, source) in &config.sources {
        let password = Config::env_password("sources", name);
        let tables = with_source!(source, s => s.describe(name, password.as_deref()).await)
            .with_context(|| format!("reading the tables of source {name}"))?;
        for t in tables {
            out.insert(t.id.clone(), (name.clone(), Arc::new(t)));
        }
    }
    Ok(out)
}

/// The versions of each table's value schema that the schema transport holds (the registry,
/// or the schema topic), oldest first: events written with them may still be in Kafka, and
/// the router must map them too.
async fn registered_versions(
    config: &Config,
    tables: Vec<(TableId, String)>,
) -> Result<BTreeMap<TableId, Vec<Arc<TableSchema>>>, String> {
    let registry = config.schemas.registry()?;
    let (transport, schema_topic) = (config.transport()?, config.kafka.schema_topic.clone());
    let schemas =
        tokio::task::spawn_blocking(move || -> Result<Vec<(TableId, Vec<String>)>, String> {
            let subject = |topic: &str| format!("{topic}-value");
            match registry {
                Some(r) => tables
                    .into_iter()
                    .map(|(t, topic)| {
                        let s = subject(&topic);
                        let versions = r.versions(&s).map_err(|e| e.to_string())?;
                        let schemas = versions
                            .into_iter()
                            .map(|v| r.version(&s, Some(v)).map(|sv| sv.schema))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| e.to_string())?;
                        Ok((t, schemas))
                    })
                    .collect(),
                None => {
                    let read = match &transport {
                        Transport::Kafka(kafka) => {
                            read_to_end(kafka, &schema_topic, std::time::Duration::from_secs(10))
                        }
                        Transport::Local(local) => local.read_control(&schema_topic),
                    };
                    let records = match read {
                        Ok(r) => r,
                        // Nothing captured yet: no versions.
                        Err(e)
                            if ["UnknownTopic", "Unknown topic", "UnknownPartition"]
                                .iter()
                                .any(|m| e.contains(m)) =>
                        {
                            Vec::new()
                        }
                        Err(e) => return Err(e),
                    };
                    let topic = TopicSchemas::from_records(records);
                    Ok(tables
                        .into_iter()
                        .map(|(t, name)| {
                            let v = topic
                                .versions(&subject(&name))
                                .into_iter()
                                .map(str::to_string)
                                .collect();
                            (t, v)
                        })
                        .collect())
                }
            }
        })
        .await
        .map_err(|e| e.to_string())??;
    let mut out = BTreeMap::new();
    for (table, jsons) in schemas {
        let versions = jsons
            .iter()
            .filter_map(|j| EnvelopeDecoder::from_schema_json(j).ok())
            .map(|d| d.table)
            .collect();
        out.insert(table, versions);
    }
    Ok(out)
}

fn dir_of(config: &Config, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    match dir {
        Some(d) => Ok(d.to_path_buf()),
        None => config.schemes_dir().context(
            "give --dir, or set router.schemes in the config to the directory of the schemes",
        ),
    }
}

/// Writes the identity scheme of every captured table into `dir` (made if missing), keeping
/// files that exist unless `force`. Returns what it did, a line per table.
pub async fn generate(
    config: &Config,
    dir: Option<&Path>,
    force: bool,
) -> anyhow::Result<Vec<String>> {
    let dir = dir_of(config, dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let sink = config.router.as_ref().map(|r| r.sink.as_str());
    let mut report = Vec::new();
    for (id, (source, table)) in describe_sources(config).await? {
        let path = dir.join(format!("{id}.avsc"));
        if path.exists() && !force {
            report.push(format!(
                "kept {} (it exists; --force overwrites)",
                path.display()
            ));
            continue;
        }
        let text = serde_json::to_string_pretty(&identity(&table, &source, sink))? + "\n";
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        report.push(format!(
            "wrote {} ({id} from source {source}: {} columns)",
            path.display(),
            table.columns.len()
        ));
    }
    Ok(report)
}

/// The outcome of `check`: a line per scheme or problem, and whether all are valid.
pub struct CheckReport {
    pub lines: Vec<String>,
    pub ok: bool,
}

/// Checks every scheme in `dir`: on its own, against its source table as the source declares
/// it now, and against the sink table it writes.
pub async fn check(config: &Config, dir: Option<&Path>) -> anyhow::Result<CheckReport> {
    let dir = dir_of(config, dir)?;
    let files = scheme_files(&dir).map_err(|e| anyhow::anyhow!(e))?;
    let tables = describe_sources(config).await?;
    let hmac_key = Config::hmac_key().map_err(|e| anyhow::anyhow!(e))?;
    let mut lines = Vec::new();
    let registered = match registered_versions(
        config,
        tables
            .iter()
            .map(|(id, (source, _))| (id.clone(), id.topic(&config.source_topic_prefix(source))))
            .collect(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            lines.push(format!(
                "warning: cannot read the tables' schema versions from Kafka ({e}); schemes are \
                 checked against the source tables as they are now only"
            ));
            BTreeMap::new()
        }
    };
    let mut sinks: BTreeMap<String, AnySink> = BTreeMap::new();
    let mut failed = 0;
    let mut accepted: Vec<Arc<Scheme>> = Vec::new();
    let mut mapped_sources: Vec<TableId> = Vec::new();
    for path in &files {
        let mut errors: Vec<SchemeError> = Vec::new();
        let problem = |at: &str, message: String, fix: String| SchemeError {
            file: path.display().to_string(),
            at: at.to_string(),
            message,
            fix,
        };
        let scheme = match Scheme::load(path) {
            Ok(s) => {
                mapped_sources.push(s.source.clone());
                Arc::new(s)
            }
            Err(e) => {
                failed += 1;
                lines.push(e.to_string());
                continue;
            }
        };
        if let Some(conflict) = scheme.conflicts_with(&accepted) {
            errors.push(conflict);
        }
        if let Some(sink) = &scheme.sink {
            if !config.sinks.contains_key(sink) {
                errors.push(problem(
                    "\"sluice.sink\"",
                    format!("\"{sink}\" names no sink in the config"),
                    format!(
                        "use one of: {}",
                        config.sinks.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        let Some((_, table)) = tables.get(&scheme.source) else {
            let captured: Vec<String> = tables.keys().map(ToString::to_string).collect();
            let fix = match sluice_schemas::scheme::did_you_mean(
                &scheme.source.to_string(),
                captured.iter().map(String::as_str),
            ) {
                Some(t) => format!("did you mean \"{t}\"?"),
                None => format!(
                    "name a captured table ({}), or add the table to a source's tables",
                    captured.join(", ")
                ),
            };
            errors.push(problem(
                "\"sluice.source\"",
                format!(
                    "{} is not captured by any source in the config",
                    scheme.source
                ),
                fix,
            ));
            failed += 1;
            lines.extend(errors.iter().map(ToString::to_string));
            continue;
        };
        let mapping = match scheme.compile(table, hmac_key.as_deref()) {
            Ok(m) => m,
            Err(e) => {
                failed += 1;
                errors.extend(e.0);
                lines.extend(errors.iter().map(ToString::to_string));
                continue;
            }
        };
        lines.extend(mapping.warnings.iter().map(|w| format!("warning: {w}")));
        // Events written with earlier versions of the table may still be in Kafka.
        let versions = registered.get(&scheme.source).cloned().unwrap_or_default();
        for (n, version) in versions.iter().enumerate() {
            if **version == **table {
                continue;
            }
            let at = |at: &str| {
                format!(
                    "{at} (against version {} of {}, whose events may still be in Kafka)",
                    n + 1,
                    scheme.source
                )
            };
            match scheme.compile(version, hmac_key.as_deref()) {
                Err(e) => errors.extend(e.0.into_iter().map(|mut err| {
                    err.at = at(&err.at);
                    err
                })),
                Ok(old) => {
                    // Allowed by Avro, and probably not meant: a field that reads a column now
                    // but only its default in events of that version.
                    let now = mapping.defaulted_fields();
                    let gone: Vec<&str> = version
                        .columns
                        .iter()
                        .filter(|c| !table.columns.iter().any(|t| t.name == c.name))
                        .map(|c| c.name.as_str())
                        .collect();
                    for f in old
                        .defaulted_fields()
                        .into_iter()
                        .filter(|f| !now.contains(f))
                    {
                        lines.push(format!(
                            "warning: {}",
                            problem(
                                &at(&format!("field `{f}`")),
                                "that version has no column for the field, so its events write the field's default".into(),
                                if gone.is_empty() {
                                    "give the field an alias for the column's name in that version".into()
                                } else {
                                    format!(
                                        "if the column had another name then, add it to \"aliases\" (columns only that version has: {})",
                                        gone.join(", ")
                                    )
                                },
                            )
                        ));
                    }
                }
            }
        }
        // The sink table: the scheme's sink, or the router's when the scheme names none.
        let sink_name = scheme
            .sink
            .clone()
            .or_else(|| config.router.as_ref().map(|r| r.sink.clone()));
        if let Some(sink_config) = sink_name.as_ref().and_then(|n| config.sinks.get(n)) {
            let name = sink_name.clone().unwrap_or_default();
            if !sinks.contains_key(&name) {
                let group = config
                    .router
                    .as_ref()
                    .map(|r| r.group_id.clone())
                    .unwrap_or_default();
                let password = Config::env_password("sinks", &name);
                let sink = match sink_config {
                    SinkConfig::Postgres(pg) => {
                        PostgresSink::connect(&name, &group, pg.clone(), password)
                            .await
                            .map(AnySink::Postgres)
                    }
                    SinkConfig::Mysql(my) => {
                        MysqlSink::connect(&name, &group, my.clone(), password)
                            .await
                            .map(AnySink::Mysql)
                    }
                }
                .with_context(|| format!("connecting to sink {name}"))?;
                sinks.insert(name.clone(), sink);
            }
            let sink = sinks.get_mut(&name).expect("inserted above");
            for p in sink.check_target(&mapping.target).await? {
                errors.push(problem(
                    &if p.at == "table" {
                        format!("sink {name}")
                    } else {
                        format!("sink {name}, column `{}`", p.at)
                    },
                    p.message,
                    p.fix,
                ));
            }
        }
        if errors.is_empty() {
            let key: Vec<&str> = mapping
                .target
                .key_columns()
                .map(|c| c.name.as_str())
                .collect();
            lines.push(format!(
                "{}: ok: {} → {}{} ({} columns, key {}; {} schema version{} in Kafka)",
                path.display(),
                scheme.source,
                mapping.target.id,
                sink_name
                    .map(|s| format!(" in sink {s}"))
                    .unwrap_or_default(),
                mapping.target.columns.len(),
                key.join(", "),
                versions.len(),
                if versions.len() == 1 { "" } else { "s" }
            ));
            accepted.push(scheme);
        } else {
            failed += 1;
            lines.extend(errors.iter().map(ToString::to_string));
        }
    }
    for id in tables.keys() {
        if !mapped_sources.contains(id) && !files.is_empty() {
            lines.push(format!("{id}: no scheme; written as it is"));
        }
    }
    lines.push(format!(
        "{} scheme{} checked, {failed} with errors",
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    ));
    Ok(CheckReport {
        lines,
        ok: failed == 0,
    })
}
