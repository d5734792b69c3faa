//! Measures the two ways a PostgreSQL sink can upsert a batch, on one table of ~10 mixed
//! columns (~200 bytes a row), and prints rows/s for each:
//!
//! - `unnest`: what the sink does — `INSERT … SELECT … FROM unnest($1::text[], …) ON CONFLICT
//!   DO UPDATE`, one statement per batch, values as text arrays cast per column;
//! - `copy`: `COPY` the batch into a temporary table, then the same set-based `INSERT … SELECT
//!   … ON CONFLICT DO UPDATE` from it.
//!
//! Each method inserts ROWS new rows, then upserts them all again (every row a conflict), in
//! batches of BATCH rows, one transaction per batch. Not a test: run it with
//! `tests/bench/sink_upsert_methods.sh [ROWS] [BATCH]`.
//!
//! Usage: upsert_methods POSTGRES_URL [ROWS] [BATCH]

use std::time::Instant;

use futures::SinkExt;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

const COLUMNS: &str = "id bigint PRIMARY KEY, a int, b bigint, c numeric(12,2), d text, \
    e timestamptz, f boolean, g double precision, h uuid, i text";
const NAMES: [&str; 10] = ["id", "a", "b", "c", "d", "e", "f", "g", "h", "i"];
const TYPES: [&str; 10] = [
    "bigint",
    "integer",
    "bigint",
    "numeric",
    "text",
    "timestamptz",
    "boolean",
    "double precision",
    "uuid",
    "text",
];

/// Row `n`'s values as text (round `r` changes some of them).
fn row(n: i64, r: i64) -> [String; 10] {
    [
        n.to_string(),
        (n % 1000 + r).to_string(),
        (n * 7919).to_string(),
        format!("{}.{:02}", n % 100_000, n % 100),
        format!("customer {n} round {r} {}", "x".repeat(40)),
        format!("2024-01-{:02} 12:34:56.{:06}+00", n % 28 + 1, n % 1_000_000),
        (n % 2 == 0).to_string(),
        format!("{}", n as f64 / 7.0),
        format!("00000000-0000-4000-8000-{n:012x}"),
        format!("note {}", r * 31 + n),
    ]
}

fn upsert_sql(from: &str) -> String {
    let updates: Vec<String> = NAMES[1..]
        .iter()
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    format!(
        "INSERT INTO bench ({}) SELECT {} FROM {from} ON CONFLICT (id) DO UPDATE SET {}",
        NAMES.join(", "),
        NAMES
            .iter()
            .zip(TYPES)
            .map(|(n, t)| format!("{n}::{t}"))
            .collect::<Vec<_>>()
            .join(", "),
        updates.join(", ")
    )
}

async fn by_unnest(
    client: &mut Client,
    rows: &[[String; 10]],
) -> Result<(), tokio_postgres::Error> {
    let arrays: Vec<Vec<&str>> = (0..10)
        .map(|c| rows.iter().map(|r| r[c].as_str()).collect())
        .collect();
    let placeholders: Vec<String> = (1..=10).map(|i| format!("${i}::text[]")).collect();
    let from = format!(
        "unnest({}) AS v({})",
        placeholders.join(", "),
        NAMES.join(", ")
    );
    let txn = client.transaction().await?;
    let stmt = txn
        .prepare_typed(&upsert_sql(&from), &[Type::TEXT_ARRAY; 10])
        .await?;
    let params: Vec<&(dyn ToSql + Sync)> =
        arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    txn.execute(&stmt, &params).await?;
    txn.commit().await
}

async fn by_copy(client: &mut Client, rows: &[[String; 10]]) -> Result<(), tokio_postgres::Error> {
    let txn = client.transaction().await?;
    txn.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS staging (id text, a text, b text, c text, d text, \
         e text, f text, g text, h text, i text) ON COMMIT DELETE ROWS",
    )
    .await?;
    let mut text = String::with_capacity(rows.len() * 220);
    for r in rows {
        // (No value here needs COPY's escaping: no tab, newline or backslash.)
        text.push_str(&r.join("\t"));
        text.push('\n');
    }
    let sink = txn.copy_in("COPY staging FROM STDIN").await?;
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(text)).await?;
    sink.finish().await?;
    txn.execute(&upsert_sql("staging"), &[]).await?;
    txn.commit().await
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .ok_or("usage: upsert_methods POSTGRES_URL [ROWS] [BATCH]")?;
    let total: i64 = args.get(2).map_or(Ok(200_000), |s| s.parse())?;
    let batch: usize = args.get(3).map_or(Ok(5_000), |s| s.parse())?;
    let (mut client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    println!("method  phase   rows     seconds  rows/s   (batches of {batch})");
    for method in ["unnest", "copy"] {
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS bench; CREATE TABLE bench ({COLUMNS})"
            ))
            .await?;
        for (phase, round) in [("insert", 0), ("upsert", 1)] {
            let rows: Vec<[String; 10]> = (1..=total).map(|n| row(n, round)).collect();
            let started = Instant::now();
            for chunk in rows.chunks(batch) {
                match method {
                    "unnest" => by_unnest(&mut client, chunk).await?,
                    _ => by_copy(&mut client, chunk).await?,
                }
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{method:<7} {phase:<7} {total:<8} {secs:<8.2} {:.0}",
                total as f64 / secs
            );
        }
        let check: i64 = client
            .query_one("SELECT count(*) FROM bench WHERE d LIKE '%round 1%'", &[])
            .await?
            .get(0);
        assert_eq!(check, total, "{method}: every row upserted");
    }
    Ok(())
}
