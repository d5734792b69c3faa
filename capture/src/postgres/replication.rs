//! A minimal walsender client: the PostgreSQL streaming replication protocol over a
//! `replication=database` connection, on top of `postgres-protocol`'s message codecs.
//!
//! `tokio-postgres` has no CopyBoth support, and the maintained replication crates run their
//! own worker task and bring a second TLS/SCRAM stack. Owning these ~300 lines lets capture
//! (a) create the slot and keep its exported snapshot on the same connection, (b) decide exactly
//! which LSN is reported as flushed (only what Kafka acknowledged), and (c) apply backpressure
//! by simply not reading.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The connection's byte stream: plain TCP, or TLS over it after PostgreSQL's SSLRequest.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// PostgreSQL's SSLRequest code.
const SSL_REQUEST_CODE: i32 = 80_877_103;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Errors of the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("replication connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("server error {code}: {message}")]
    Server {
        code: String,
        message: String,
        detail: Option<String>,
    },
    #[error("replication protocol: {0}")]
    Protocol(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("TLS: {0}")]
    Tls(String),
}

impl ReplicationError {
    /// SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub application_name: String,
    /// TLS, when configured: the client configuration and the name the server's
    /// certificate must carry.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A message from the walsender while streaming.
#[derive(Debug)]
pub enum ReplicationMessage {
    /// WAL data: one pgoutput message.
    XLogData {
        wal_start: u64,
        wal_end: u64,
        data: Bytes,
    },
    /// Keepalive: the server's WAL end; reply at once when `reply_requested`.
    Keepalive { wal_end: u64, reply_requested: bool },
}

/// A text-mode result row of a simple query.
pub type Row = Vec<Option<String>>;

/// One backend message: tag and body.
struct Frame {
    tag: u8,
    body: Bytes,
}

/// A replication connection, before and during streaming.
pub struct ReplicationConnection {
    stream: Stream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    streaming: bool,
}

impl ReplicationConnection {
    /// Connects with `replication=database` and authenticates (trust, password, md5 or
    /// SCRAM-SHA-256). Session settings fix the text format capture parses.
    pub async fn connect(
        params: &ConnectParams,
    ) -> Result<ReplicationConnection, ReplicationError> {
        let mut tcp = TcpStream::connect((params.host.as_str(), params.port)).await?;
        tcp.set_nodelay(true)?;
        let stream = match &params.tls {
            None => Stream::Plain(tcp),
            Some((config, name)) => {
                let mut request = BytesMut::with_capacity(8);
                request.put_i32(8);
                request.put_i32(SSL_REQUEST_CODE);
                tcp.write_all(&request).await?;
                match tcp.read_u8().await? {
                    b'S' => {}
                    b'N' => {
                        return Err(ReplicationError::Tls(
                            "the server does not accept TLS connections (ssl = off); turn ssl on or set tls.mode = \"disable\"".into(),
                        ))
                    }
                    other => {
                        return Err(ReplicationError::Protocol(format!(
                            "unexpected answer {other:#x} to SSLRequest"
                        )))
                    }
                }
                let tls = crate::tls::handshake(config.clone(), name.clone(), tcp)
                    .await
                    .map_err(|e| match crate::tls::tls_failure(&e) {
                        Some(tls) => ReplicationError::Tls(format!(
                            "{tls} (check tls.ca_file, and that the url's host is a name the certificate carries)"
                        )),
                        None => ReplicationError::Io(e),
                    })?;
                Stream::Tls(Box::new(tls))
            }
        };
        let mut conn = ReplicationConnection {
            stream,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(1024),
            streaming: false,
        };
        let startup = [
            ("user", params.user.as_str()),
            ("database", params.dbname.as_str()),
            ("replication", "database"),
            ("application_name", params.application_name.as_str()),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "3"),
            ("bytea_output", "hex"),
            ("IntervalStyle", "iso_8601"),
            ("lc_monetary", "C"),
        ];
        frontend::startup_message(startup.iter().copied(), &mut conn.write_buf)?;
        conn.flush().await?;
        conn.authenticate(params).await?;
        // Parameter statuses and backend key data until ReadyForQuery.
        loop {
            let frame = conn.read_frame().await?;
            match frame.tag {
                b'Z' => break,
                b'S' | b'K' | b'N' => {}
                b'E' => return Err(server_error(frame.body)),
                other => return Err(unexpected(other, "startup")),
            }
        }
        Ok(conn)
    }

    async fn authenticate(&mut self, params: &ConnectParams) -> Result<(), ReplicationError> {
        let password = || {
            params.password.as_deref().ok_or_else(|| {
                ReplicationError::Auth(
                    "the server asks for a password and none is configured".into(),
                )
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let mut frame = self.read_frame().await?;
            match frame.tag {
                b'E' => return Err(server_error(frame.body)),
                b'R' => {}
                other => return Err(unexpected(other, "authentication")),
            }
            let code = frame.body.get_i32();
            match code {
                0 => return Ok(()),
                3 => {
                    let mut pw = password()?.as_bytes().to_vec();
                    pw.push(0);
                    frontend::password_message(&pw, &mut self.write_buf)?;
                }
                5 => {
                    let mut salt = [0u8; 4];
                    frame.body.copy_to_slice(&mut salt);
                    let hash = postgres_protocol::authentication::md5_hash(
                        params.user.as_bytes(),
                        password()?.as_bytes(),
                        salt,
                    );
                    let mut pw = hash.into_bytes();
                    pw.push(0);
                    frontend::password_message(&pw, &mut self.write_buf)?;
                }
                10 => {
                    let mechanisms: Vec<&[u8]> = frame.body.split(|b| *b == 0).collect();
                    if !mechanisms.contains(&b"SCRAM-SHA-256".as_slice()) {
                        return Err(ReplicationError::Auth(
                            "server offers no SCRAM-SHA-256".into(),
                        ));
                    }
                    let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        "SCRAM-SHA-256",
                        s.message(),
                        &mut self.write_buf,
                    )?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Auth("SASL continue without start".into())
                    })?;
                    s.update(&frame.body)
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut self.write_buf)?;
                }
                12 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ReplicationError::Auth("SASL final without start".into()))?;
                    s.finish(&frame.body)
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                    continue;
                }
                other => {
                    return Err(ReplicationError::Auth(format!(
                        "unsupported authentication method {other}"
                    )))
                }
            }
            self.flush().await?;
        }
    }

    /// Runs a replication command or query in the simple protocol; returns its text rows.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, ReplicationError> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let mut frame = self.read_frame().await?;
            match frame.tag {
                b'T' | b'C' | b'I' | b'N' | b'S' => {}
                b'D' => {
                    let n = frame.body.get_i16();
                    let mut row = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        let len = frame.body.get_i32();
                        if len < 0 {
                            row.push(None);
                        } else {
                            let v = frame.body.split_to(len as usize);
                            row.push(Some(String::from_utf8_lossy(&v).into_owned()));
                        }
                    }
                    rows.push(row);
                }
                b'E' => error = Some(server_error(frame.body)),
                b'Z' => break,
                other => return Err(unexpected(other, "query")),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// `START_REPLICATION SLOT … LOGICAL start (options)`; switches to CopyBoth.
    pub async fn start_logical(
        &mut self,
        slot: &str,
        start_lsn: u64,
        options: &[(&str, &str)],
    ) -> Result<(), ReplicationError> {
        let opts = options
            .iter()
            .map(|(k, v)| format!("\"{k}\" '{}'", v.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({opts})",
            quote_ident(slot),
            format_lsn(start_lsn)
        );
        frontend::query(&sql, &mut self.write_buf)?;
        self.flush().await?;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'W' => break,
                b'N' | b'S' => {}
                b'E' => {
                    let err = server_error(frame.body);
                    // Drain to ReadyForQuery so the connection stays usable.
                    while self.read_frame().await?.tag != b'Z' {}
                    return Err(err);
                }
                other => return Err(unexpected(other, "START_REPLICATION")),
            }
        }
        self.streaming = true;
        Ok(())
    }

    /// The next replication message. Cancel-safe: a partially read message stays buffered.
    pub async fn recv(&mut self) -> Result<ReplicationMessage, ReplicationError> {
        loop {
            let mut frame = self.read_frame().await?;
            match frame.tag {
                b'd' => {
                    if frame.body.is_empty() {
                        return Err(ReplicationError::Protocol("empty CopyData".into()));
                    }
                    match frame.body.get_u8() {
                        b'w' if frame.body.len() >= 24 => {
                            let wal_start = frame.body.get_u64();
                            let wal_end = frame.body.get_u64();
                            let _send_time = frame.body.get_i64();
                            return Ok(ReplicationMessage::XLogData {
                                wal_start,
                                wal_end,
                                data: frame.body,
                            });
                        }
                        b'k' if frame.body.len() >= 17 => {
                            let wal_end = frame.body.get_u64();
                            let _send_time = frame.body.get_i64();
                            let reply_requested = frame.body.get_u8() == 1;
                            return Ok(ReplicationMessage::Keepalive {
                                wal_end,
                                reply_requested,
                            });
                        }
                        other => {
                            return Err(ReplicationError::Protocol(format!(
                                "unknown CopyData message {:?}",
                                other as char
                            )))
                        }
                    }
                }
                b'N' | b'S' => {}
                b'E' => return Err(server_error(frame.body)),
                b'c' => {
                    return Err(ReplicationError::Protocol(
                        "server ended the replication stream".into(),
                    ))
                }
                other => return Err(unexpected(other, "streaming")),
            }
        }
    }

    /// Sends a standby status update: `flush` is the LSN up to which the slot may be advanced.
    pub async fn send_status(
        &mut self,
        write: u64,
        flush: u64,
        reply: bool,
    ) -> Result<(), ReplicationError> {
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(write);
        body.put_u64(flush);
        body.put_u64(flush);
        body.put_i64(pg_now_micros());
        body.put_u8(u8::from(reply));
        frontend::CopyData::new(body.freeze())?.write(&mut self.write_buf);
        self.flush().await
    }

    /// Ends the stream politely (CopyDone, Terminate).
    pub async fn close(mut self) {
        if self.streaming {
            frontend::copy_done(&mut self.write_buf);
        }
        frontend::terminate(&mut self.write_buf);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.flush()).await;
    }

    async fn flush(&mut self) -> Result<(), ReplicationError> {
        self.stream.write_all(&self.write_buf).await?;
        self.write_buf.clear();
        self.stream.flush().await?;
        Ok(())
    }

    async fn read_frame(&mut self) -> Result<Frame, ReplicationError> {
        loop {
            if self.read_buf.len() >= 5 {
                let len = u32::from_be_bytes([
                    self.read_buf[1],
                    self.read_buf[2],
                    self.read_buf[3],
                    self.read_buf[4],
                ]) as usize;
                if len < 4 {
                    return Err(ReplicationError::Protocol(format!(
                        "bad message length {len}"
                    )));
                }
                if self.read_buf.len() > len {
                    let mut frame = self.read_buf.split_to(len + 1);
                    let tag = frame.get_u8();
                    frame.advance(4);
                    return Ok(Frame {
                        tag,
                        body: frame.freeze(),
                    });
                }
                self.read_buf.reserve(len + 1 - self.read_buf.len());
            } else {
                self.read_buf.reserve(8 * 1024);
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ReplicationError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed the replication connection",
                )));
            }
        }
    }
}

fn server_error(mut body: Bytes) -> ReplicationError {
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = None;
    while body.has_remaining() {
        let kind = body.get_u8();
        if kind == 0 {
            break;
        }
        let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
        let value = String::from_utf8_lossy(&body[..end]).into_owned();
        body.advance((end + 1).min(body.len()));
        match kind {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = Some(value),
            _ => {}
        }
    }
    ReplicationError::Server {
        code,
        message,
        detail,
    }
}

fn unexpected(tag: u8, during: &str) -> ReplicationError {
    ReplicationError::Protocol(format!(
        "unexpected message {:?} during {during}",
        tag as char
    ))
}

fn pg_now_micros() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.as_micros() as i64 - PG_EPOCH_OFFSET_MICROS
}

/// Converts a PostgreSQL timestamp (microseconds since 2000-01-01) to Unix microseconds.
pub fn pg_time_to_unix_us(pg_micros: i64) -> i64 {
    pg_micros + PG_EPOCH_OFFSET_MICROS
}

/// `X/Y` hex form of an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses the `X/Y` form.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Double-quotes an identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        assert_eq!(format_lsn(0x1_0000_00A0), "1/A0");
        assert_eq!(parse_lsn("1/A0"), Some(0x1_0000_00A0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn server_errors_carry_code_and_message() {
        let mut body = BytesMut::new();
        for (k, v) in [
            (b'S', "ERROR"),
            (b'C', "42704"),
            (b'M', "replication slot \"x\" does not exist"),
        ] {
            body.put_u8(k);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let err = server_error(body.freeze());
        assert_eq!(err.code(), Some("42704"));
        assert!(err.to_string().contains("does not exist"));
    }
}
