//! How Sluice reaches the brokers: `[kafka.tls]` and `[kafka.sasl]` turned into librdkafka
//! properties, and the check at start-up that the brokers accept them — a wrong password or a
//! certificate that cannot be verified stops the process with what to fix, instead of
//! leaving every client retrying forever.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Deserialize;

/// The environment variable the SASL password comes from.
pub const PASSWORD_ENV: &str = "SLUICE_KAFKA_PASSWORD";

/// `[kafka.tls]`: TLS to the brokers (with `[kafka.sasl]`: SASL over TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// CA certificates (PEM) the brokers' certificates must chain to. Default: the system's
    /// trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for brokers that require one (`ssl.client.auth=required`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, unencrypted).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Check that each broker's certificate names the host Sluice connects to. Default true.
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

fn yes() -> bool {
    true
}

/// `[kafka.sasl]`: SASL authentication; the password comes from `SLUICE_KAFKA_PASSWORD`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `SCRAM-SHA-512` (default), `SCRAM-SHA-256` or `PLAIN`.
    #[serde(default)]
    pub mechanism: SaslMechanism,
    pub username: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum SaslMechanism {
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    fn name(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

/// Properties `[kafka.tls]`/`[kafka.sasl]` own: setting them in `[kafka.properties]` too
/// would leave two answers to one question.
const OWNED_PREFIXES: &[&str] = &["security.protocol", "ssl.", "sasl."];

/// The security properties of `tls` and `sasl` (none without either).
pub fn security_properties(
    tls: Option<&KafkaTls>,
    sasl: Option<&KafkaSasl>,
    password: Option<String>,
) -> Vec<(&'static str, String)> {
    let mut props = Vec::new();
    let protocol = match (tls.is_some(), sasl.is_some()) {
        (false, false) => return props,
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    props.push(("security.protocol", protocol.to_string()));
    if let Some(tls) = tls {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        if let Some(ca) = &tls.ca_file {
            props.push(("ssl.ca.location", path(ca)));
        }
        if let Some(cert) = &tls.cert_file {
            props.push(("ssl.certificate.location", path(cert)));
        }
        if let Some(key) = &tls.key_file {
            props.push(("ssl.key.location", path(key)));
        }
        let check = if tls.verify_hostname { "https" } else { "none" };
        props.push(("ssl.endpoint.identification.algorithm", check.to_string()));
    }
    if let Some(sasl) = sasl {
        props.push(("sasl.mechanism", sasl.mechanism.name().to_string()));
        props.push(("sasl.username", sasl.username.clone()));
        props.push(("sasl.password", password.unwrap_or_default()));
    }
    props
}

/// The problems of `tls`, `sasl` and `properties` together, each naming its field and fix.
pub fn validate(
    tls: Option<&KafkaTls>,
    sasl: Option<&KafkaSasl>,
    properties: &std::collections::BTreeMap<String, String>,
    password: Option<&str>,
    problems: &mut Vec<String>,
) {
    if tls.is_some() || sasl.is_some() {
        for key in properties.keys() {
            if OWNED_PREFIXES.iter().any(|p| key.starts_with(p)) {
                problems.push(format!(
                    "kafka.properties.\"{key}\" conflicts with [kafka.tls]/[kafka.sasl]: remove \
                     it and say it in those tables"
                ));
            }
        }
    }
    if let Some(tls) = tls {
        for (field, file) in [
            ("ca_file", &tls.ca_file),
            ("cert_file", &tls.cert_file),
            ("key_file", &tls.key_file),
        ] {
            if let Some(file) = file {
                if let Err(e) = std::fs::metadata(file) {
                    problems.push(format!(
                        "kafka.tls.{field} = \"{}\": {e}; point it at a readable PEM file",
                        file.display()
                    ));
                }
            }
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            problems.push(
                "kafka.tls.cert_file and kafka.tls.key_file go together: set both (a client \
                 certificate and its key) or neither"
                    .into(),
            );
        }
    }
    if let Some(sasl) = sasl {
        if sasl.username.is_empty() {
            problems.push("kafka.sasl.username must not be empty".into());
        }
        if password.is_none_or(str::is_empty) {
            problems.push(format!(
                "kafka.sasl needs a password: set the environment variable {PASSWORD_ENV}"
            ));
        }
        if sasl.mechanism == SaslMechanism::Plain && tls.is_none() {
            tracing::warn!(
                "kafka.sasl.mechanism = \"PLAIN\" without [kafka.tls] sends the password in \
                 clear text"
            );
        }
    }
}

/// Remembers the first error that no retry fixes (credentials, certificates, protocol).
#[derive(Default)]
struct Watch {
    refused: Mutex<Option<String>>,
    /// A broker closed the connection before answering its first request: what a listener
    /// expecting TLS or SASL does to a plain client (and a broker going down, too).
    closed_before_answering: std::sync::atomic::AtomicBool,
}

impl ClientContext for Watch {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if message.contains("in state APIVERSION_QUERY") {
            self.closed_before_answering
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::debug!(fac, message, "broker check");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match refusal(&error, reason) {
            Some(why) => {
                let mut refused = self
                    .refused
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                refused.get_or_insert(why);
            }
            None => tracing::debug!(%error, reason, "broker check"),
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Watch {}

/// What to fix for an error no retry fixes; `None` for others (a broker down, a timeout).
pub fn refusal(error: &KafkaError, reason: &str) -> Option<String> {
    let code = error.rdkafka_error_code()?;
    let reason = reason.trim();
    Some(match code {
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => format!(
            "the brokers refused Sluice's credentials ({reason}); check kafka.sasl.username, \
             the password in {PASSWORD_ENV} and kafka.sasl.mechanism (the user needs \
             credentials for that mechanism on the cluster)"
        ),
        RDKafkaErrorCode::SSL if reason.contains("certificate verify failed") => format!(
            "the broker's TLS certificate could not be verified ({reason}); set \
             kafka.tls.ca_file to the CA that signed it, and use a host in \
             kafka.bootstrap_servers that the certificate names (or, knowingly, \
             kafka.tls.verify_hostname = false)"
        ),
        RDKafkaErrorCode::SSL => format!(
            "TLS to the brokers failed ({reason}); check that the listener in \
             kafka.bootstrap_servers speaks TLS, and kafka.tls"
        ),
        _ => return None,
    })
}

/// Asks the brokers for their metadata with `client`'s settings, for up to `timeout`.
/// `Err` says what to fix when they refuse the credentials or certificate (or the client
/// cannot be made with them); a broker that does not answer is not an error here — the
/// components wait for it as they always do.
pub fn check_brokers(
    client: &rdkafka::ClientConfig,
    timeout: Duration,
    cancelled: impl Fn() -> bool,
) -> Result<(), String> {
    let consumer: BaseConsumer<Watch> = client
        .clone()
        .set("group.id", "sluice-broker-check")
        .create_with_context(Watch::default())
        .map_err(|e| format!("the Kafka client cannot be made from [kafka]: {e}"))?;
    let started = std::time::Instant::now();
    let answered = loop {
        // Short attempts, so that a refusal reported meanwhile ends the wait.
        match consumer.fetch_metadata(None, Duration::from_millis(500)) {
            Ok(_) => break true,
            Err(e) => tracing::debug!(error = %e, "brokers not answering yet"),
        }
        // Errors reach the context as events, served by polling.
        let _ = consumer.poll(Duration::ZERO);
        let refused = consumer.context().refused.lock().map(|r| r.clone());
        if let Ok(Some(why)) = refused {
            return Err(why);
        }
        if cancelled() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            break false;
        }
    };
    if !answered {
        let hint = if consumer
            .context()
            .closed_before_answering
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            "; they closed each connection before answering: if the listener expects TLS \
             or SASL, add [kafka.tls] / [kafka.sasl] to match it"
        } else {
            ""
        };
        tracing::warn!(
            bootstrap = client.get("bootstrap.servers").unwrap_or_default(),
            "the brokers did not answer at start-up; the components keep trying{hint}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_and_sasl_make_sasl_ssl_with_the_password_from_the_environment() {
        let tls = KafkaTls {
            ca_file: Some("/etc/ca.pem".into()),
            cert_file: None,
            key_file: None,
            verify_hostname: true,
        };
        let sasl = KafkaSasl {
            mechanism: SaslMechanism::ScramSha256,
            username: "sluice".into(),
        };
        let props = security_properties(Some(&tls), Some(&sasl), Some("s3cret".into()));
        let get = |k: &str| props.iter().find(|(p, _)| *p == k).map(|(_, v)| v.as_str());
        assert_eq!(get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(get("ssl.endpoint.identification.algorithm"), Some("https"));
        assert_eq!(get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(get("sasl.password"), Some("s3cret"));
        assert_eq!(
            security_properties(Some(&tls), None, None)[0].1,
            "ssl".to_string()
        );
        assert!(security_properties(None, None, None).is_empty());
    }

    #[test]
    fn a_missing_password_and_a_conflicting_property_are_named_with_the_fix() {
        let sasl = KafkaSasl {
            mechanism: SaslMechanism::ScramSha512,
            username: "sluice".into(),
        };
        let props = [("sasl.username".to_string(), "other".to_string())].into();
        let mut problems = Vec::new();
        validate(None, Some(&sasl), &props, None, &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("kafka.properties.\"sasl.username\""));
        assert!(problems[1].contains(PASSWORD_ENV));
    }
}
