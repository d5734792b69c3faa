//! An in-test Schema Registry that serves the part of Confluent's REST API Sluice uses, with
//! Confluent's documented status codes, error codes and bodies. No Schema Registry server can
//! be installed on our machines (it is a JVM service outside Debian and PyPI), so the client is
//! tested against this: it is not a mock of our own client's expectations but of Confluent's
//! documentation (docs.confluent.io, "Schema Registry API Reference").
//!
//! Served: `POST /subjects/{s}/versions` (register; 409 when incompatible with the subject's
//! level, 422/42201 for an invalid schema), `GET /schemas/ids/{id}` (404/40403),
//! `GET /subjects`, `GET /subjects/{s}/versions` (404/40401), `GET /subjects/{s}/versions/{v}`
//! (`latest` too; 404/40401, 40402), `GET|PUT /config` and `/config/{s}`. Optionally basic
//! auth (401/401 without or with wrong credentials), TLS, and injected failures (500/50001).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value as Json};
use sluice_connect::registry::base64;
use sluice_schemas::avro::EnvelopeDecoder;
use sluice_schemas::compat::Compatibility;

use crate::Result;

#[derive(Default)]
struct State {
    /// Schema text by id (ids are global: the same schema text has one id in every subject).
    schemas: Vec<String>,
    /// Each subject's versions as schema ids, oldest first.
    subjects: BTreeMap<String, Vec<u32>>,
    global: Option<Compatibility>,
    per_subject: BTreeMap<String, Compatibility>,
    /// Requests served, as `METHOD /path`.
    log: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    credentials: Option<String>,
    fail_next: AtomicUsize,
    stop: AtomicBool,
}

/// A running registry; stopped on drop.
pub struct SchemaRegistry {
    shared: Arc<Shared>,
    port: u16,
    tls: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// TLS material for [`SchemaRegistry::start_tls`].
pub struct RegistryTls<'a> {
    pub cert: &'a std::path::Path,
    pub key: &'a std::path::Path,
}

impl SchemaRegistry {
    /// Starts on a free port, plain HTTP. `credentials` (`user:password`) turns on basic auth.
    pub fn start(credentials: Option<&str>) -> Result<SchemaRegistry> {
        SchemaRegistry::start_inner(credentials, None)
    }

    /// Starts on a free port, HTTPS with this certificate.
    pub fn start_tls(credentials: Option<&str>, tls: RegistryTls<'_>) -> Result<SchemaRegistry> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(tls.cert)
            .map_err(|e| e.to_string())?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_file(tls.key).map_err(|e| e.to_string())?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
        SchemaRegistry::start_inner(credentials, Some(Arc::new(config)))
    }

    fn start_inner(
        credentials: Option<&str>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<SchemaRegistry> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            credentials: credentials.map(|c| format!("Basic {}", base64(c.as_bytes()))),
            fail_next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let is_tls = tls.is_some();
        let thread = std::thread::spawn({
            let shared = shared.clone();
            move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (shared, tls) = (shared.clone(), tls.clone());
                            std::thread::spawn(move || {
                                let _ = stream.set_nonblocking(false);
                                serve_connection(stream, &shared, tls);
                            });
                        }
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                    }
                }
            }
        });
        Ok(SchemaRegistry {
            shared,
            port,
            tls: is_tls,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>` (or `https://localhost:<port>` with TLS, the certificate's name).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.port)
        } else {
            format!("http://127.0.0.1:{}", self.port)
        }
    }

    /// The next `n` requests fail with 500 and error code 50001.
    pub fn fail_next(&self, n: usize) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    /// Requests served so far, `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().log.clone()
    }

    /// The versions of a subject as `(id, schema)`, oldest first.
    pub fn subject(&self, subject: &str) -> Vec<(u32, String)> {
        let state = self.shared.state.lock().unwrap();
        state
            .subjects
            .get(subject)
            .map(|ids| {
                ids.iter()
                    .map(|id| (*id, state.schemas[*id as usize - 1].clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for SchemaRegistry {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared, tls: Option<Arc<rustls::ServerConfig>>) {
    match tls {
        None => serve(stream, shared),
        Some(config) => {
            let Ok(conn) = rustls::ServerConnection::new(config) else {
                return;
            };
            serve(rustls::StreamOwned::new(conn, stream), shared);
        }
    }
}

/// Serves requests on one connection until the client closes it (keep-alive).
fn serve<S: Read + Write>(stream: S, shared: &Shared) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut length = 0usize;
        let mut authorization = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "authorization" => authorization = Some(value.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (status, response) = handle(shared, &method, &path, &body, authorization.as_deref());
        let text = response.to_string();
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            404 => "Not Found",
            409 => "Conflict",
            422 => "Unprocessable Entity",
            _ => "Internal Server Error",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n\r\n",
            text.len()
        );
        let out = reader.get_mut();
        if out.write_all(head.as_bytes()).is_err()
            || out.write_all(text.as_bytes()).is_err()
            || out.flush().is_err()
        {
            return;
        }
    }
}

fn error(status: u16, code: i64, message: String) -> (u16, Json) {
    (status, json!({"error_code": code, "message": message}))
}

fn handle(
    shared: &Shared,
    method: &str,
    path: &str,
    body: &[u8],
    authorization: Option<&str>,
) -> (u16, Json) {
    let mut state = shared.state.lock().unwrap();
    state.log.push(format!("{method} {path}"));
    if let Some(expected) = &shared.credentials {
        if authorization != Some(expected.as_str()) {
            return error(401, 401, "Unauthorized".into());
        }
    }
    if shared
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return error(500, 50001, "Error in the backend data store".into());
    }
    let path = path.split('?').next().unwrap_or("");
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (method, segs.as_slice()) {
        ("GET", ["subjects"]) => (200, json!(state.subjects.keys().collect::<Vec<_>>())),
        ("GET", ["schemas", "ids", id]) => match id
            .parse::<usize>()
            .ok()
            .and_then(|i| state.schemas.get(i.wrapping_sub(1)))
        {
            Some(schema) => (200, json!({ "schema": schema })),
            None => error(404, 40403, format!("Schema {id} not found")),
        },
        ("GET", ["subjects", subject, "versions"]) => match state.subjects.get(*subject) {
            Some(ids) => (200, json!((1..=ids.len()).collect::<Vec<_>>())),
            None => error(404, 40401, format!("Subject '{subject}' not found.")),
        },
        ("GET", ["subjects", subject, "versions", version]) => {
            let Some(ids) = state.subjects.get(*subject) else {
                return error(404, 40401, format!("Subject '{subject}' not found."));
            };
            let index = match *version {
                "latest" => ids.len(),
                v => v.parse::<usize>().unwrap_or(0),
            };
            match ids.get(index.wrapping_sub(1)) {
                Some(id) => (
                    200,
                    json!({"subject": subject, "version": index, "id": id,
                           "schema": state.schemas[*id as usize - 1]}),
                ),
                None => error(404, 40402, format!("Version {version} not found.")),
            }
        }
        ("POST", ["subjects", subject, "versions"]) => register(&mut state, subject, body),
        ("GET", ["config"]) => (
            200,
            json!({"compatibilityLevel": state.global.unwrap_or_default().name()}),
        ),
        ("GET", ["config", subject]) => match state.per_subject.get(*subject) {
            Some(c) => (200, json!({ "compatibilityLevel": c.name() })),
            None => error(
                404,
                40408,
                format!("Subject '{subject}' does not have subject-level compatibility configured"),
            ),
        },
        ("PUT", ["config", rest @ ..]) => {
            let level = serde_json::from_slice::<Json>(body)
                .ok()
                .and_then(|b| b["compatibility"].as_str().map(str::to_string))
                .and_then(|c| c.parse::<Compatibility>().ok());
            let Some(level) = level else {
                return error(422, 42203, "Invalid compatibility level".into());
            };
            match rest {
                [] => state.global = Some(level),
                [subject] => {
                    state.per_subject.insert(subject.to_string(), level);
                }
                _ => return error(404, 404, "HTTP 404 Not Found".into()),
            }
            (200, json!({ "compatibility": level.name() }))
        }
        _ => error(404, 404, "HTTP 404 Not Found".into()),
    }
}

fn register(state: &mut State, subject: &str, body: &[u8]) -> (u16, Json) {
    let Some(schema) = serde_json::from_slice::<Json>(body)
        .ok()
        .and_then(|b| b["schema"].as_str().map(str::to_string))
    else {
        return error(
            422,
            42201,
            "Either the input schema or one its references is invalid".into(),
        );
    };
    let parsed = match apache_avro::Schema::parse_str(&schema) {
        Ok(s) => s,
        Err(e) => return error(422, 42201, format!("Invalid schema {schema}, details: {e}")),
    };
    let existing_id = state
        .schemas
        .iter()
        .position(|s| *s == schema)
        .map(|i| i as u32 + 1);
    let versions = state.subjects.get(subject).cloned().unwrap_or_default();
    if let Some(id) = existing_id.filter(|id| versions.contains(id)) {
        return (200, json!({ "id": id }));
    }
    let level = state
        .per_subject
        .get(subject)
        .copied()
        .or(state.global)
        .unwrap_or_default();
    let history: Vec<&String> = versions
        .iter()
        .map(|id| &state.schemas[*id as usize - 1])
        .collect();
    if let Err(details) = check(level, &history, &schema, &parsed) {
        return error(
            409,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{details}]"
            ),
        );
    }
    let id = match existing_id {
        Some(id) => id,
        None => {
            state.schemas.push(schema);
            state.schemas.len() as u32
        }
    };
    state
        .subjects
        .entry(subject.to_string())
        .or_default()
        .push(id);
    (200, json!({ "id": id }))
}

/// The subject's level against its versions: Sluice envelopes by their tables; any other
/// schema (keys) by Avro's own reader/writer check.
fn check(
    level: Compatibility,
    history: &[&String],
    schema: &str,
    parsed: &apache_avro::Schema,
) -> std::result::Result<(), String> {
    if level == Compatibility::None || history.is_empty() {
        return Ok(());
    }
    if let Ok(new) = EnvelopeDecoder::from_schema_json(schema) {
        let old: Vec<_> = history
            .iter()
            .filter_map(|s| EnvelopeDecoder::from_schema_json(s).ok())
            .map(|d| d.table)
            .collect();
        let old_refs: Vec<_> = old.iter().map(AsRef::as_ref).collect();
        return level
            .check(&old_refs, &new.table)
            .map_err(|e| e.problems.join(", "));
    }
    let against: Vec<&&String> = if level.transitive() {
        history.iter().collect()
    } else {
        history.last().into_iter().collect()
    };
    for old in against {
        let old = apache_avro::Schema::parse_str(old).map_err(|e| e.to_string())?;
        let backward = matches!(
            level,
            Compatibility::Backward
                | Compatibility::BackwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        );
        let forward = !matches!(
            level,
            Compatibility::Backward | Compatibility::BackwardTransitive
        );
        if backward {
            apache_avro::schema_compatibility::SchemaCompatibility::can_read(&old, parsed)
                .map_err(|e| e.to_string())?;
        }
        if forward {
            apache_avro::schema_compatibility::SchemaCompatibility::can_read(parsed, &old)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
