//! MariaDB types through capture: each value read from the Kafka topic, decoded from Avro,
//! equals what was written — for rows read by the snapshot and for rows streamed from the
//! binlog alike.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_harness::{Broker, MariaDb, Postgres, SluiceProcess};
use sluice_schemas::{Datum, Op, SqlType};

mod common;
use common::TopicReader;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

const DDL: &str = "CREATE TABLE shop.every_type (
    id int PRIMARY KEY,
    ti tinyint, tiu tinyint unsigned, si smallint, siu smallint unsigned,
    mi mediumint, miu mediumint unsigned, i int, iu int unsigned, bi bigint, biu bigint unsigned,
    dec65 decimal(65,30), f float, d double, b1 bit(1), b64 bit(64), flag boolean,
    c char(5) CHARACTER SET utf8mb4, vc varchar(50) CHARACTER SET utf8mb4,
    l1 varchar(20) CHARACTER SET latin1, t text CHARACTER SET utf8mb4,
    bin binary(4), vb varbinary(10), bl blob,
    dt date, tm time(6), dtm datetime(6), ts timestamp(6) NULL, y year,
    e enum('sad','ok','happy'), s set('a','b','c'), j json, u uuid, ip inet6, g geometry
) CHARACTER SET utf8mb4";

/// Row 1: extremes; row 2: zeroes and empties; row 3: NULLs.
const ROWS: &str = "
    (ID, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
     -9223372036854775808, 18446744073709551615,
     '-12345678901234567890123456789012345.123456789012345678901234567891',
     3.5, -1.7976931348623157e308, b'1', b'1111111111111111111111111111111111111111111111111111111111111111', true,
     'héllo', 'ünïcödé ✓ 𝄞', 'café €', 'long text', x'00ff10ab', x'0102', x'deadbeef',
     '9999-12-31', '-838:59:59.000000', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', 2155,
     'happy', 'a,c', '{\"k\": [1, 2]}', '123e4567-e89b-12d3-a456-426614174000', '2001:db8::1', ST_GeomFromText('POINT(1 2)', 4326)),
    (ID + 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'0', b'0', false,
     '', '', '', '', x'00000000', x'', x'',
     '1000-01-01', '00:00:00', '1970-01-01 00:00:01', '1970-01-01 00:00:01', 1901,
     'sad', '', '[]', '00000000-0000-0000-0000-000000000000', '::', ST_GeomFromText('POINT(0 0)')),
    (ID + 2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";

/// MySQL's geometry storage: the SRID (little-endian u32), then the point as WKB.
fn point(srid: u32, x: f64, y: f64) -> Vec<u8> {
    let mut b = srid.to_le_bytes().to_vec();
    b.extend_from_slice(&[1, 1, 0, 0, 0]);
    b.extend_from_slice(&x.to_le_bytes());
    b.extend_from_slice(&y.to_le_bytes());
    b
}

fn expected(id: i32) -> Vec<Vec<Datum>> {
    use Datum::*;
    let days =
        |y: i64, m: u32, d: u32| Date(sluice_schemas::pgtext::days_from_civil(y, m, d) as i32);
    let s = |v: &str| String(v.to_string());
    vec![
        vec![
            Int(id),
            Int(-128),
            Int(255),
            Int(-32768),
            Int(65535),
            Int(-8388608),
            Int(16777215),
            Int(i32::MIN),
            Long(4294967295),
            Long(i64::MIN),
            Decimal("18446744073709551615".into()),
            Decimal("-12345678901234567890123456789012345.123456789012345678901234567891".into()),
            Float(3.5),
            Double(-1.7976931348623157e308),
            s("1"),
            s(&"1".repeat(64)),
            Int(1),
            s("héllo"),
            s("ünïcödé ✓ 𝄞"),
            s("café €"),
            s("long text"),
            Bytes(vec![0, 0xff, 0x10, 0xab]),
            Bytes(vec![1, 2]),
            Bytes(vec![0xde, 0xad, 0xbe, 0xef]),
            days(9999, 12, 31),
            TimeMicros(-(838 * 3600 + 59 * 60 + 59) * 1_000_000),
            TimestampMicros(253402300799999999),
            TimestampMicros(2147483647999999),
            Int(2155),
            s("happy"),
            s("a,c"),
            s("{\"k\": [1, 2]}"),
            Uuid("123e4567-e89b-12d3-a456-426614174000".into()),
            s("2001:db8::1"),
            Bytes(point(4326, 1.0, 2.0)),
        ],
        vec![
            Int(id + 1),
            Int(0),
            Int(0),
            Int(0),
            Int(0),
            Int(0),
            Int(0),
            Int(0),
            Long(0),
            Long(0),
            Decimal("0".into()),
            Decimal("0.000000000000000000000000000000".into()),
            Float(0.0),
            Double(0.0),
            s("0"),
            s(&"0".repeat(64)),
            Int(0),
            s(""),
            s(""),
            s(""),
            s(""),
            Bytes(vec![0; 4]),
            Bytes(vec![]),
            Bytes(vec![]),
            days(1000, 1, 1),
            TimeMicros(0),
            TimestampMicros(1_000_000),
            TimestampMicros(1_000_000),
            Int(1901),
            s("sad"),
            s(""),
            s("[]"),
            Uuid("00000000-0000-0000-0000-000000000000".into()),
            s("::"),
            Bytes(point(0, 0.0, 0.0)),
        ],
        std::iter::once(Int(id + 2))
            .chain(std::iter::repeat_n(Null, 34))
            .collect(),
    ]
}

/// A MariaDB with `shop.every_type` and its first rows (ids 1 to 3).
fn with_first_rows() -> MariaDb {
    let maria = MariaDb::start().unwrap();
    maria.create_database("shop").unwrap();
    maria
        .root_sql(&format!(
            "{DDL}; INSERT INTO shop.every_type VALUES {}",
            ROWS.replace("ID", "1")
        ))
        .unwrap();
    maria
}

#[test]
fn every_mariadb_type_survives_snapshot_and_binlog_exactly() {
    // Given rows of every type before capture starts (snapshot) and after (binlog),
    let maria = with_first_rows();
    let kafka = Broker::shared().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (capture, _) = SluiceProcess::start_in(
        Path::new(SLUICE),
        "capture",
        dir.path(),
        &format!(
            "[kafka]\n{}\
             [sources.maria]\nkind = \"mysql\"\nurl = \"{}\"\ntables = [\"shop.every_type\"]\nserver_id = 5403\n",
            kafka.kafka_toml("types"),
            maria.url()
        ),
    )
    .unwrap();
    // (rows written once capture streams, so that they travel through the binlog)
    let deadline = Instant::now() + Duration::from_secs(30);
    while !capture.log().contains("starting binlog stream") {
        assert!(Instant::now() < deadline, "{}", capture.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    maria
        .root_sql(&format!(
            "INSERT INTO shop.every_type VALUES {}",
            ROWS.replace("ID", "11")
        ))
        .unwrap();

    // then every value read back from the topic is the value written.
    let events = read_events(&kafka, "types.maria.shop.every_type", 6, &capture);
    let decoded_types: Vec<SqlType> = events[0].0.clone();
    assert_eq!(decoded_types.len(), 35);
    for (first, op) in [(1, Op::Read), (11, Op::Create)] {
        for (i, want) in expected(first).into_iter().enumerate() {
            let (_, got_op, got) = events
                .iter()
                .find(|(_, _, row)| row[0] == Datum::Int(first + i as i32))
                .unwrap_or_else(|| panic!("row {} missing", first + i as i32));
            assert_eq!(*got_op, op);
            for (c, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g,
                    w,
                    "row {}, column {c} ({:?})\n{}",
                    first + i as i32,
                    decoded_types[c],
                    conversion_errors(&capture)
                );
            }
        }
    }
    assert!(
        !capture.log().contains("value could not be converted"),
        "{}",
        capture.log()
    );

    // A zero date (allowed by a lax sql_mode) names no calendar day or instant: it arrives as
    // NULL with an error saying so, and the rest of the row arrives intact.
    maria
        .root_sql(
            "SET SESSION sql_mode = ''; INSERT INTO shop.every_type (id, dt, dtm, ts, y, vc) \
             VALUES (21, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', 0, 'zero')",
        )
        .unwrap();
    let events = read_events(&kafka, "types.maria.shop.every_type", 7, &capture);
    let (_, _, row) = events
        .iter()
        .find(|(_, _, row)| row[0] == Datum::Int(21))
        .expect("the zero-date row arrives");
    assert_eq!(row[18], Datum::String("zero".into()));
    assert_eq!(&row[24..27], &[Datum::Null, Datum::Null, Datum::Null]);
    assert_eq!(
        row[28],
        Datum::Int(0),
        "YEAR 0000 is a value, not a zero date"
    );
    assert_eq!(
        conversion_errors(&capture).matches("zero").count(),
        3,
        "{}",
        conversion_errors(&capture)
    );
}

/// Every column of `shop.every_type` as MariaDB prints it …
const MARIADB_TEXT: &str =
    "SET time_zone = '+00:00'; SELECT id, ti, tiu, si, siu, mi, miu, i, iu, \
    bi, biu, dec65, f, d, LPAD(BIN(b1), 1, '0'), LPAD(BIN(b64), 64, '0'), flag, c, vc, l1, t, \
    LOWER(HEX(bin)), LOWER(HEX(vb)), LOWER(HEX(bl)), dt, CAST(TIME_TO_SEC(tm) AS DECIMAL(20,6)), \
    dtm, ts, y, e, s, j, u, ip, LOWER(HEX(g)) FROM shop.every_type ORDER BY id";

/// … and the same columns as PostgreSQL prints them in the sink, in MariaDB's notation
/// (`NULL` for null, the exponent without `+`, six fraction digits).
const PG_COLUMNS: [&str; 35] = [
    "id",
    "ti",
    "tiu",
    "si",
    "siu",
    "mi",
    "miu",
    "i",
    "iu",
    "bi",
    "biu",
    "dec65",
    "f",
    "replace(d::text, 'e+', 'e')",
    "b1",
    "b64",
    "flag",
    "c",
    "vc",
    "l1",
    "t",
    "encode(bin, 'hex')",
    "encode(vb, 'hex')",
    "encode(bl, 'hex')",
    "dt",
    "extract(epoch FROM tm)::numeric(20,6)",
    "to_char(dtm, 'YYYY-MM-DD HH24:MI:SS.US')",
    "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
    "y",
    "e",
    "s",
    "j",
    "u",
    "host(ip)",
    "encode(g, 'hex')",
];

#[test]
fn every_mariadb_type_reaches_a_postgres_sink_exactly() {
    // Given a MariaDB table of every type with rows before capture starts,
    let maria = with_first_rows();
    let pg = Postgres::shared().unwrap();
    pg.create_database("sink").unwrap();
    let kafka = Broker::shared().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sluice, _) = SluiceProcess::start_in(
        Path::new(SLUICE),
        "run",
        dir.path(),
        &format!(
            "[kafka]\n{}\
             [sources.maria]\nkind = \"mysql\"\nurl = \"{}\"\ntables = [\"shop.every_type\"]\nserver_id = 5404\n\
             [sinks.pg]\nkind = \"postgres\"\nurl = \"{}\"\n\
             [router]\nsink = \"pg\"\ngroup_id = \"{}to_pg\"\n[router.batch]\nmax_delay_ms = 50\n",
            kafka.kafka_toml("sluice"),
            maria.url(),
            pg.url("sink"),
            kafka.namespace(),
        ),
    )
    .unwrap();
    // when more arrive through the binlog, and some change again — a TIME past 24 hours and
    // one below zero, which PostgreSQL's time cannot hold,
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sluice.log().contains("starting binlog stream") {
        assert!(Instant::now() < deadline, "{}", sluice.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    maria
        .root_sql(&format!(
            "INSERT INTO shop.every_type VALUES {}; \
             UPDATE shop.every_type SET tm = '100:00:00.5', vc = 'changed' WHERE id = 12; \
             UPDATE shop.every_type SET tm = '-00:00:00.25' WHERE id = 2; \
             DELETE FROM shop.every_type WHERE id = 3",
            ROWS.replace("ID", "11")
        ))
        .unwrap();

    // then the PostgreSQL sink holds every value exactly, row for row.
    let pg_text = format!(
        "SELECT concat_ws('|', {}) FROM shop.every_type ORDER BY id",
        PG_COLUMNS
            .iter()
            .map(|c| format!("coalesce(({c})::text, 'NULL')"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let want: Vec<String> = maria
            .root_sql(MARIADB_TEXT)
            .unwrap()
            .lines()
            .map(|l| l.replace('\t', "|"))
            .collect();
        let got: Vec<String> = pg
            .psql("sink", &pg_text)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if got == want {
            assert_eq!(want.len(), 5);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "want {want:#?}\n got {got:#?}\n--- log ---\n{}",
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // MySQL's TIME became an interval, the unsigned bigint a numeric that holds its maximum.
    let types = pg
        .psql(
            "sink",
            "SELECT column_name || ' ' || data_type FROM information_schema.columns \
             WHERE table_name = 'every_type' AND column_name IN ('tm', 'biu', 'u', 'g') \
             ORDER BY ordinal_position",
        )
        .unwrap();
    assert_eq!(
        types.lines().collect::<Vec<_>>(),
        ["biu numeric", "tm interval", "u uuid", "g bytea"]
    );
    // Nothing was refused on the way.
    let metrics = sluice.metrics().unwrap();
    let dead_lettered: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_router_dlq_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(dead_lettered, 0.0, "{metrics}");
}

fn conversion_errors(capture: &SluiceProcess) -> String {
    capture
        .log()
        .lines()
        .filter(|l| l.contains("could not be converted"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads `n` events of `topic`: (column types, op, after image).
fn read_events(
    kafka: &Broker,
    topic: &str,
    n: usize,
    capture: &SluiceProcess,
) -> Vec<(Vec<SqlType>, Op, Vec<Datum>)> {
    let mut reader = TopicReader::new(
        &kafka.bootstrap(),
        kafka.namespace(),
        &format!("{}{topic}", kafka.namespace()),
    );
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} events arrived\n{}",
            out.len(),
            capture.log()
        );
        let Some(read) = reader.next(Duration::from_millis(200)) else {
            continue;
        };
        let types = read
            .table
            .columns
            .iter()
            .map(|c| c.sql_type.clone())
            .collect();
        out.push((
            types,
            read.event.op,
            read.event.row.after.expect("inserts carry the after image"),
        ));
    }
    out
}
