//! A client for the Confluent Schema Registry REST API (which Confluent, Apicurio's ccompat
//! API, Karapace and Redpanda all serve), and Confluent's wire format.
//!
//! - Subjects follow TopicNameStrategy: `<topic>-key`, `<topic>-value`.
//! - A message is `0x00`, the schema id as a 4-byte big-endian integer, then the Avro datum.
//! - Schemas by id are cached forever (an id never changes meaning); registrations are cached
//!   per subject and schema text.
//! - Transient failures (connection refused or reset, timeouts, HTTP 5xx, Confluent's 50001–
//!   50003) are retried with backoff a few times and then reported as transient, so the caller's
//!   own retry takes over; everything else is definite and says what to fix.
//!
//! Blocking (ureq): call it from `spawn_blocking`. Registry calls happen once per schema, never
//! per event.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value as Json};

/// The first byte of a message in Confluent's wire format.
pub const CONFLUENT_MAGIC: u8 = 0;

/// Confluent's framing: magic byte and schema id.
pub fn confluent_header(id: u32) -> [u8; 5] {
    let b = id.to_be_bytes();
    [CONFLUENT_MAGIC, b[0], b[1], b[2], b[3]]
}

/// Splits a Confluent-framed message into its schema id and datum.
pub fn parse_confluent(message: &[u8]) -> Option<(u32, &[u8])> {
    match message {
        [CONFLUENT_MAGIC, a, b, c, d, rest @ ..] => {
            Some((u32::from_be_bytes([*a, *b, *c, *d]), rest))
        }
        _ => None,
    }
}

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// Base URL, `http://` or `https://` (a path prefix is kept: `https://host/apis/ccompat/v7`).
    pub url: String,
    /// HTTP basic authentication (Confluent Cloud: the API key and secret).
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA certificates to trust instead of the public web roots (`https` only).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key for mutual TLS.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Attempts for a transiently failing request before reporting it.
    pub attempts: u32,
}

/// A registry failure, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry did not answer usefully now; retrying may help.
    #[error("schema registry {url} unavailable: {detail}")]
    Unavailable { url: String, detail: String },
    /// The schema breaks the subject's compatibility level (HTTP 409).
    #[error("schema registry refused the new schema of subject {subject} as incompatible (HTTP 409): {message}")]
    Incompatible { subject: String, message: String },
    /// Credentials missing or wrong (HTTP 401/403).
    #[error("schema registry {url} refused the credentials (HTTP {status}): {message}; check schemas.registry.username and SLUICE_SCHEMAS_REGISTRY_PASSWORD")]
    Unauthorized {
        url: String,
        status: u16,
        message: String,
    },
    /// Subject, version or schema id unknown (HTTP 404, codes 40401–40403).
    #[error("schema registry: {what} not found (error code {code})")]
    NotFound { what: String, code: i64 },
    /// Anything else the registry refused (an invalid schema, 42201, …).
    #[error("schema registry refused {what} (HTTP {status}, error code {code}): {message}")]
    Refused {
        what: String,
        status: u16,
        code: i64,
        message: String,
    },
}

impl RegistryError {
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// A registered version of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectVersion {
    pub version: i64,
    pub id: u32,
    pub schema: String,
}

/// A Schema Registry client; see the module docs.
pub struct Registry {
    agent: ureq::Agent,
    base: String,
    authorization: Option<String>,
    attempts: u32,
    schemas_by_id: Mutex<HashMap<u32, String>>,
    registered: Mutex<HashMap<(String, String), u32>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("url", &self.base).finish()
    }
}

fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// RFC 4648 base64 with padding (for HTTP basic authentication).
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Registry {
    /// Builds the client; reads the TLS files now so a bad path is a config error.
    pub fn new(settings: &RegistrySettings) -> Result<Registry, String> {
        let base = settings.url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "schemas.registry.url must start with http:// or https:// (got \"{}\")",
                settings.url
            ));
        }
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path)
                .map_err(|e| format!("schemas.registry.{what} {}: {e}", path.display()))
        };
        let mut tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls);
        if let Some(ca) = &settings.ca_file {
            let pem = read(ca, "ca_file")?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()
                .map_err(|e| format!("schemas.registry.ca_file {}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "schemas.registry.ca_file {} holds no PEM certificate",
                    ca.display()
                ));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)));
        } else {
            tls = tls.root_certs(ureq::tls::RootCerts::WebPki);
        }
        match (&settings.cert_file, &settings.key_file) {
            (Some(cert), Some(key)) => {
                let chain: Vec<ureq::tls::Certificate<'static>> =
                    ureq::tls::parse_pem(&read(cert, "cert_file")?)
                        .filter_map(|item| match item {
                            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                            Ok(_) => None,
                            Err(e) => Some(Err(e)),
                        })
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("schemas.registry.cert_file: {e}"))?;
                let key = ureq::tls::PrivateKey::from_pem(&read(key, "key_file")?)
                    .map_err(|e| format!("schemas.registry.key_file: {e}"))?;
                tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
            }
            (None, None) => {}
            _ => {
                return Err(
                    "schemas.registry.cert_file and key_file go together: set both or neither"
                        .into(),
                )
            }
        }
        let timeout = if settings.timeout.is_zero() {
            Duration::from_secs(10)
        } else {
            settings.timeout
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .tls_config(tls.build())
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let authorization = match (&settings.username, &settings.password) {
            (Some(user), pass) => Some(format!(
                "Basic {}",
                base64(format!("{user}:{}", pass.as_deref().unwrap_or("")).as_bytes())
            )),
            (None, Some(_)) => {
                return Err(
                    "a schema registry password is set without schemas.registry.username".into(),
                )
            }
            (None, None) => None,
        };
        Ok(Registry {
            agent,
            base,
            authorization,
            attempts: settings.attempts.max(1),
            schemas_by_id: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashMap::new()),
        })
    }

    /// The base URL, for messages.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// One request, retried while it fails transiently. Returns status and parsed JSON body.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Json>,
    ) -> Result<(u16, Json), RegistryError> {
        let url = format!("{}{path}", self.base);
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let result = self.request_once(method, &url, body);
            match result {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    tracing::warn!(error = %e, attempt, retry_in = ?backoff, "schema registry request failed; retrying");
                    std::thread::sleep(backoff);
                    backoff *= 4;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn request_once(
        &self,
        method: &str,
        url: &str,
        body: Option<&Json>,
    ) -> Result<(u16, Json), RegistryError> {
        let unavailable = |detail: String| RegistryError::Unavailable {
            url: self.base.clone(),
            detail,
        };
        const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
        let response = match (method, body) {
            ("POST" | "PUT", Some(body)) => {
                let mut req = if method == "POST" {
                    self.agent.post(url)
                } else {
                    self.agent.put(url)
                };
                req = req
                    .header("Content-Type", CONTENT_TYPE)
                    .header("Accept", CONTENT_TYPE);
                if let Some(auth) = &self.authorization {
                    req = req.header("Authorization", auth);
                }
                req.send(body.to_string())
            }
            _ => {
                let mut req = self.agent.get(url).header("Accept", CONTENT_TYPE);
                if let Some(auth) = &self.authorization {
                    req = req.header("Authorization", auth);
                }
                req.call()
            }
        };
        let mut response = match response {
            Ok(r) => r,
            Err(e) if tls_refusal(&e).is_some() => {
                // A certificate the client refuses does not get better by retrying.
                return Err(RegistryError::Refused {
                    what: format!("the TLS connection to {}", self.base),
                    status: 0,
                    code: 0,
                    message: format!(
                        "{} (check schemas.registry.ca_file)",
                        tls_refusal(&e).unwrap_or_default()
                    ),
                });
            }
            Err(e) => return Err(unavailable(e.to_string())),
        };
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| unavailable(format!("reading the response: {e}")))?;
        let json: Json = if text.trim().is_empty() {
            Json::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Json::String(text))
        };
        if status >= 500 {
            return Err(unavailable(format!(
                "HTTP {status}: {}",
                error_message(&json)
            )));
        }
        if status == 401 || status == 403 {
            return Err(RegistryError::Unauthorized {
                url: self.base.clone(),
                status,
                message: error_message(&json),
            });
        }
        Ok((status, json))
    }

    /// Registers `schema` under `subject` (idempotent: an existing identical schema gets its
    /// id back) and returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let cache_key = (subject.to_string(), schema.to_string());
        if let Some(id) = self
            .registered
            .lock()
            .expect("registry cache")
            .get(&cache_key)
        {
            return Ok(*id);
        }
        let path = format!("/subjects/{}/versions", encode_path_segment(subject));
        let (status, body) = self.request("POST", &path, Some(&json!({ "schema": schema })))?;
        let id = match status {
            200 => body["id"]
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| RegistryError::Refused {
                    what: format!("the schema of subject {subject}"),
                    status,
                    code: 0,
                    message: format!("the answer has no schema id: {body}"),
                })?,
            409 => {
                return Err(RegistryError::Incompatible {
                    subject: subject.to_string(),
                    message: error_message(&body),
                })
            }
            _ => {
                return Err(refusal(
                    format!("the schema of subject {subject}"),
                    status,
                    &body,
                ))
            }
        };
        self.registered
            .lock()
            .expect("registry cache")
            .insert(cache_key, id);
        self.schemas_by_id
            .lock()
            .expect("registry cache")
            .insert(id, schema.to_string());
        Ok(id)
    }

    /// The schema with this id (cached).
    pub fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        if let Some(s) = self.schemas_by_id.lock().expect("registry cache").get(&id) {
            return Ok(s.clone());
        }
        let (status, body) = self.request("GET", &format!("/schemas/ids/{id}"), None)?;
        let schema = match status {
            200 => body["schema"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| refusal(format!("schema id {id}"), status, &body))?,
            404 => {
                return Err(RegistryError::NotFound {
                    what: format!("schema id {id}"),
                    code: body["error_code"].as_i64().unwrap_or(40403),
                })
            }
            _ => return Err(refusal(format!("schema id {id}"), status, &body)),
        };
        self.schemas_by_id
            .lock()
            .expect("registry cache")
            .insert(id, schema.clone());
        Ok(schema)
    }

    /// The versions registered under `subject`, oldest first; empty for an unknown subject.
    pub fn versions(&self, subject: &str) -> Result<Vec<i64>, RegistryError> {
        let path = format!("/subjects/{}/versions", encode_path_segment(subject));
        let (status, body) = self.request("GET", &path, None)?;
        match status {
            200 => Ok(body
                .as_array()
                .map(|v| v.iter().filter_map(Json::as_i64).collect())
                .unwrap_or_default()),
            404 => Ok(Vec::new()),
            _ => Err(refusal(
                format!("the versions of subject {subject}"),
                status,
                &body,
            )),
        }
    }

    /// One version of a subject (`None` for the latest).
    pub fn version(
        &self,
        subject: &str,
        version: Option<i64>,
    ) -> Result<SubjectVersion, RegistryError> {
        let v = version.map_or_else(|| "latest".to_string(), |v| v.to_string());
        let path = format!("/subjects/{}/versions/{v}", encode_path_segment(subject));
        let (status, body) = self.request("GET", &path, None)?;
        match status {
            200 => {
                let id = body["id"].as_u64().and_then(|id| u32::try_from(id).ok());
                let schema = body["schema"].as_str();
                match (id, schema) {
                    (Some(id), Some(schema)) => {
                        self.schemas_by_id
                            .lock()
                            .expect("registry cache")
                            .insert(id, schema.to_string());
                        Ok(SubjectVersion {
                            version: body["version"].as_i64().unwrap_or(0),
                            id,
                            schema: schema.to_string(),
                        })
                    }
                    _ => Err(refusal(
                        format!("version {v} of subject {subject}"),
                        status,
                        &body,
                    )),
                }
            }
            404 => Err(RegistryError::NotFound {
                what: format!("version {v} of subject {subject}"),
                code: body["error_code"].as_i64().unwrap_or(40402),
            }),
            _ => Err(refusal(
                format!("version {v} of subject {subject}"),
                status,
                &body,
            )),
        }
    }
}

/// The reason, when `e` is TLS refusing the server (its certificate, the handshake).
fn tls_refusal(e: &ureq::Error) -> Option<String> {
    match e {
        ureq::Error::Tls(m) => Some(m.to_string()),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(ToString::to_string),
        _ => None,
    }
}

fn error_message(body: &Json) -> String {
    match body {
        Json::Object(o) => o
            .get("message")
            .and_then(Json::as_str)
            .map_or_else(|| body.to_string(), str::to_string),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn refusal(what: String, status: u16, body: &Json) -> RegistryError {
    RegistryError::Refused {
        what,
        status,
        code: body["error_code"].as_i64().unwrap_or(0),
        message: error_message(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confluent_framing_round_trips() {
        let mut msg = confluent_header(0x0102_0304).to_vec();
        msg.extend_from_slice(b"datum");
        assert_eq!(parse_confluent(&msg), Some((0x0102_0304, &b"datum"[..])));
        assert_eq!(parse_confluent(&[0xC3, 0x01, 0, 0, 0, 0]), None);
        assert_eq!(parse_confluent(&[0, 1, 2]), None);
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn subjects_are_escaped_in_paths() {
        assert_eq!(
            encode_path_segment("sluice.public.orders-value"),
            "sluice.public.orders-value"
        );
        assert_eq!(encode_path_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn urls_without_a_scheme_are_refused() {
        let e = Registry::new(&RegistrySettings {
            url: "registry:8081".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("must start with http:// or https://"), "{e}");
    }
}
