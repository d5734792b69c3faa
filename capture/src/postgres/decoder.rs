//! Parser for the `pgoutput` logical decoding format, protocol versions 1 and 2.
//!
//! Layout per the PostgreSQL documentation, "Logical Replication Message Formats": one message
//! per XLogData, integers big-endian, strings NUL-terminated. Version 2 adds the messages of a
//! transaction streamed while it is in progress (Stream Start, Stop, Commit, Abort); between a
//! Stream Start and its Stop, Relation, Type, Insert, Update, Delete, Truncate and Message carry
//! the xid of the (sub)transaction they belong to right after their tag ([`decode`] with
//! `in_stream`, [`stream_xid`]).

use bytes::{Buf, Bytes};

/// A decoding failure: the stream is not what pgoutput v1 sends.
#[derive(Debug, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(pub String);

/// A column of a `Relation` message.
#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq)]
pub enum TupleValue {
    Null,
    /// Unchanged TOASTed value: the server did not send it.
    Unchanged,
    /// Text format.
    Text(Bytes),
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum PgOutput {
    Begin {
        final_lsn: u64,
        commit_time: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    Relation {
        id: u32,
        namespace: String,
        name: String,
        replica_identity: u8,
        columns: Vec<RelationColumn>,
    },
    Type {
        id: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Vec<TupleValue>,
    },
    Update {
        relation: u32,
        /// `K` (key columns only) or `O` (full old row, REPLICA IDENTITY FULL), when sent.
        old: Option<(u8, Vec<TupleValue>)>,
        new: Vec<TupleValue>,
    },
    Delete {
        relation: u32,
        old: (u8, Vec<TupleValue>),
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    /// The replication origin of the transaction being read (a change another replicator
    /// applied, with `pg_replication_origin_session_setup`), sent after its Begin.
    Origin {
        commit_lsn: u64,
        name: String,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        prefix: String,
        content: Bytes,
    },
    /// The start of a block of a streamed (in-progress) transaction's changes; `first` on its
    /// first block.
    StreamStart {
        xid: u32,
        first: bool,
    },
    /// The end of that block.
    StreamStop,
    /// A streamed transaction committed: its changes are final, in commit order with the
    /// others.
    StreamCommit {
        xid: u32,
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    /// A streamed transaction (`subxid == xid`) or one of its subtransactions rolled back:
    /// nothing of it may be published.
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

/// The tags whose messages carry a (sub)transaction xid inside a stream block.
fn carries_xid(tag: u8) -> bool {
    matches!(tag, b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M')
}

/// The (sub)transaction xid of a message inside a stream block; `None` for a message that
/// carries none (an Origin).
pub fn stream_xid(data: &[u8]) -> Option<u32> {
    let (&tag, rest) = data.split_first()?;
    carries_xid(tag).then(|| {
        rest.get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    })?
}

/// Decodes one pgoutput message; `in_stream` between a Stream Start and its Stop, where most
/// messages carry an xid (skipped here: see [`stream_xid`]).
pub fn decode(mut buf: Bytes, in_stream: bool) -> Result<PgOutput, DecodeError> {
    let tag = take_u8(&mut buf)?;
    if in_stream && carries_xid(tag) {
        let _xid = take_u32(&mut buf)?;
    }
    Ok(match tag {
        b'B' => PgOutput::Begin {
            final_lsn: take_u64(&mut buf)?,
            commit_time: take_u64(&mut buf)? as i64,
            xid: take_u32(&mut buf)?,
        },
        b'C' => {
            let _flags = take_u8(&mut buf)?;
            PgOutput::Commit {
                commit_lsn: take_u64(&mut buf)?,
                end_lsn: take_u64(&mut buf)?,
                commit_time: take_u64(&mut buf)? as i64,
            }
        }
        b'R' => {
            let id = take_u32(&mut buf)?;
            let namespace = take_cstr(&mut buf)?;
            let name = take_cstr(&mut buf)?;
            let replica_identity = take_u8(&mut buf)?;
            let n = take_u16(&mut buf)?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                columns.push(RelationColumn {
                    key: take_u8(&mut buf)? & 1 == 1,
                    name: take_cstr(&mut buf)?,
                    type_oid: take_u32(&mut buf)?,
                    type_modifier: take_u32(&mut buf)? as i32,
                });
            }
            PgOutput::Relation {
                id,
                // pgoutput sends an empty namespace for pg_catalog.
                namespace: if namespace.is_empty() {
                    "pg_catalog".into()
                } else {
                    namespace
                },
                name,
                replica_identity,
                columns,
            }
        }
        b'Y' => PgOutput::Type {
            id: take_u32(&mut buf)?,
            namespace: take_cstr(&mut buf)?,
            name: take_cstr(&mut buf)?,
        },
        b'I' => {
            let relation = take_u32(&mut buf)?;
            expect(&mut buf, b'N')?;
            PgOutput::Insert {
                relation,
                new: take_tuple(&mut buf)?,
            }
        }
        b'U' => {
            let relation = take_u32(&mut buf)?;
            let mut kind = take_u8(&mut buf)?;
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some((kind, take_tuple(&mut buf)?));
                kind = take_u8(&mut buf)?;
            }
            if kind != b'N' {
                return Err(DecodeError(format!(
                    "update without new tuple (got {:?})",
                    kind as char
                )));
            }
            PgOutput::Update {
                relation,
                old,
                new: take_tuple(&mut buf)?,
            }
        }
        b'D' => {
            let relation = take_u32(&mut buf)?;
            let kind = take_u8(&mut buf)?;
            if kind != b'K' && kind != b'O' {
                return Err(DecodeError(format!(
                    "delete without old tuple (got {:?})",
                    kind as char
                )));
            }
            PgOutput::Delete {
                relation,
                old: (kind, take_tuple(&mut buf)?),
            }
        }
        b'T' => {
            let n = take_u32(&mut buf)?;
            let options = take_u8(&mut buf)?;
            let relations = (0..n)
                .map(|_| take_u32(&mut buf))
                .collect::<Result<_, _>>()?;
            PgOutput::Truncate {
                relations,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            }
        }
        b'O' => PgOutput::Origin {
            commit_lsn: take_u64(&mut buf)?,
            name: take_cstr(&mut buf)?,
        },
        b'M' => {
            let _flags = take_u8(&mut buf)?;
            let _lsn = take_u64(&mut buf)?;
            let prefix = take_cstr(&mut buf)?;
            let len = take_u32(&mut buf)? as usize;
            if buf.len() < len {
                return Err(DecodeError("message content truncated".into()));
            }
            PgOutput::Message {
                prefix,
                content: buf.split_to(len),
            }
        }
        b'S' => PgOutput::StreamStart {
            xid: take_u32(&mut buf)?,
            first: take_u8(&mut buf)? == 1,
        },
        b'E' => PgOutput::StreamStop,
        b'c' => {
            let xid = take_u32(&mut buf)?;
            let _flags = take_u8(&mut buf)?;
            PgOutput::StreamCommit {
                xid,
                commit_lsn: take_u64(&mut buf)?,
                end_lsn: take_u64(&mut buf)?,
                commit_time: take_u64(&mut buf)? as i64,
            }
        }
        // (Protocol 4 with parallel streaming adds the abort's LSN and time; not asked for.)
        b'A' => PgOutput::StreamAbort {
            xid: take_u32(&mut buf)?,
            subxid: take_u32(&mut buf)?,
        },
        other => {
            return Err(DecodeError(format!(
                "unknown message type {:?}",
                other as char
            )))
        }
    })
}

fn need(buf: &Bytes, n: usize) -> Result<(), DecodeError> {
    if buf.len() < n {
        Err(DecodeError(format!(
            "needed {n} more bytes, {} left",
            buf.len()
        )))
    } else {
        Ok(())
    }
}

fn take_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}

fn take_u16(buf: &mut Bytes) -> Result<u16, DecodeError> {
    need(buf, 2)?;
    Ok(buf.get_u16())
}

fn take_u32(buf: &mut Bytes) -> Result<u32, DecodeError> {
    need(buf, 4)?;
    Ok(buf.get_u32())
}

fn take_u64(buf: &mut Bytes) -> Result<u64, DecodeError> {
    need(buf, 8)?;
    Ok(buf.get_u64())
}

fn expect(buf: &mut Bytes, tag: u8) -> Result<(), DecodeError> {
    let got = take_u8(buf)?;
    if got == tag {
        Ok(())
    } else {
        Err(DecodeError(format!(
            "expected {:?}, got {:?}",
            tag as char, got as char
        )))
    }
}

fn take_cstr(buf: &mut Bytes) -> Result<String, DecodeError> {
    let end = buf
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| DecodeError("unterminated string".into()))?;
    let s =
        String::from_utf8(buf.split_to(end).to_vec()).map_err(|e| DecodeError(e.to_string()))?;
    buf.advance(1);
    Ok(s)
}

fn take_tuple(buf: &mut Bytes) -> Result<Vec<TupleValue>, DecodeError> {
    let n = take_u16(buf)?;
    let mut values = Vec::with_capacity(n as usize);
    for _ in 0..n {
        values.push(match take_u8(buf)? {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::Unchanged,
            b't' => {
                let len = take_u32(buf)? as usize;
                need(buf, len)?;
                TupleValue::Text(buf.split_to(len))
            }
            other => {
                return Err(DecodeError(format!(
                    "unsupported tuple value kind {:?} (binary mode is not requested)",
                    other as char
                )))
            }
        });
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn tuple(b: &mut BytesMut, values: &[Option<&str>]) {
        b.put_u16(values.len() as u16);
        for v in values {
            match v {
                None => b.put_u8(b'n'),
                Some("\u{0}unchanged") => b.put_u8(b'u'),
                Some(s) => {
                    b.put_u8(b't');
                    b.put_u32(s.len() as u32);
                    b.put_slice(s.as_bytes());
                }
            }
        }
    }

    #[test]
    fn decodes_relation_and_update_with_key_and_unchanged_toast() {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        b.put_u32(16384);
        b.put_slice(b"public\0orders\0");
        b.put_u8(b'd');
        b.put_u16(2);
        b.put_u8(1);
        b.put_slice(b"id\0");
        b.put_u32(20);
        b.put_i32(-1);
        b.put_u8(0);
        b.put_slice(b"body\0");
        b.put_u32(25);
        b.put_i32(-1);
        let rel = decode(b.freeze(), false).unwrap();
        assert!(matches!(&rel, PgOutput::Relation { name, columns, .. }
            if name == "orders" && columns.len() == 2 && columns[0].key && !columns[1].key));

        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(16384);
        b.put_u8(b'K');
        tuple(&mut b, &[Some("1"), None]);
        b.put_u8(b'N');
        tuple(&mut b, &[Some("2"), Some("\u{0}unchanged")]);
        let upd = decode(b.freeze(), false).unwrap();
        assert_eq!(
            upd,
            PgOutput::Update {
                relation: 16384,
                old: Some((
                    b'K',
                    vec![TupleValue::Text(Bytes::from_static(b"1")), TupleValue::Null]
                )),
                new: vec![
                    TupleValue::Text(Bytes::from_static(b"2")),
                    TupleValue::Unchanged
                ],
            }
        );
    }

    #[test]
    fn decodes_the_stream_messages_and_the_xid_inside_a_stream_block() {
        let mut b = BytesMut::new();
        b.put_u8(b'S');
        b.put_u32(731);
        b.put_u8(1);
        assert_eq!(
            decode(b.freeze(), false).unwrap(),
            PgOutput::StreamStart {
                xid: 731,
                first: true
            }
        );
        // An insert of subtransaction 733 inside the block: the xid comes first.
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(733);
        b.put_u32(16384);
        b.put_u8(b'N');
        tuple(&mut b, &[Some("7")]);
        let data = b.freeze();
        assert_eq!(stream_xid(&data), Some(733));
        assert_eq!(
            decode(data, true).unwrap(),
            PgOutput::Insert {
                relation: 16384,
                new: vec![TupleValue::Text(Bytes::from_static(b"7"))],
            }
        );
        // An origin carries none.
        let mut b = BytesMut::new();
        b.put_u8(b'O');
        b.put_u64(0);
        b.put_slice(b"peer\0");
        assert_eq!(stream_xid(&b.freeze()), None);
        assert_eq!(
            decode(Bytes::from_static(b"E"), false).unwrap(),
            PgOutput::StreamStop
        );
        let mut b = BytesMut::new();
        b.put_u8(b'c');
        b.put_u32(731);
        b.put_u8(0);
        b.put_u64(0x1_0000_0010);
        b.put_u64(0x1_0000_0040);
        b.put_u64(42);
        assert_eq!(
            decode(b.freeze(), false).unwrap(),
            PgOutput::StreamCommit {
                xid: 731,
                commit_lsn: 0x1_0000_0010,
                end_lsn: 0x1_0000_0040,
                commit_time: 42
            }
        );
        let mut b = BytesMut::new();
        b.put_u8(b'A');
        b.put_u32(731);
        b.put_u32(733);
        assert_eq!(
            decode(b.freeze(), false).unwrap(),
            PgOutput::StreamAbort {
                xid: 731,
                subxid: 733
            }
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(1);
        b.put_u8(b'N');
        b.put_u16(1);
        b.put_u8(b't');
        b.put_u32(100);
        b.put_slice(b"short");
        assert!(decode(b.freeze(), false).is_err());
        assert!(decode(Bytes::from_static(b"B\0\0"), false).is_err());
        assert!(decode(Bytes::from_static(b"?"), false).is_err());
    }
}
