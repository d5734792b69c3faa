//! Capture metric names, registered once with their descriptions (see METRICS.md).

use metrics::{describe_counter, describe_gauge, Unit};

/// Row change events published, labels `source`, `table`, `op`.
pub const EVENTS_TOTAL: &str = "sluice_capture_events_total";
/// Source transactions whose commit was read, label `source`.
pub const TRANSACTIONS_TOTAL: &str = "sluice_capture_transactions_total";
/// Bytes of Avro key+value published, labels `source`, `table`.
pub const BYTES_TOTAL: &str = "sluice_capture_bytes_total";
/// The LSN confirmed to the slot (everything before it is acknowledged by Kafka), label `source`.
pub const CONFIRMED_LSN: &str = "sluice_capture_confirmed_lsn";
/// Server WAL end minus confirmed LSN, label `source`.
pub const SLOT_LAG_BYTES: &str = "sluice_capture_slot_lag_bytes";
/// Records (events, and the tombstones after deletes) whose delivery Kafka acknowledged,
/// label `source`. Unlike [`EVENTS_TOTAL`], counted when the broker has them, not when the
/// producer takes them.
pub const RECORDS_ACKNOWLEDGED_TOTAL: &str = "sluice_capture_records_acknowledged_total";
/// Events handed to the producer whose delivery is not yet acknowledged, label `source`.
pub const INFLIGHT_EVENTS: &str = "sluice_capture_inflight_events";
/// Errors by kind (`transient`, `definite`, `value`), label `source`.
pub const ERRORS_TOTAL: &str = "sluice_capture_errors_total";
/// 1 while a configured table is stopped (refused at preflight, or stopped while streaming:
/// its changes are not captured; the log says why and how to fix it), else 0; labels
/// `source`, `table`.
pub const TABLE_STOPPED: &str = "sluice_capture_table_stopped";
/// Changes of stopped tables that capture read and did not publish, labels `source`, `table`.
pub const STOPPED_TABLE_CHANGES_TOTAL: &str = "sluice_capture_stopped_table_changes_total";
/// Captured PostgreSQL tables renamed at the source and followed (`renames = "follow"`):
/// still captured and published under their configured names; labels `source`, `table` (the
/// configured name).
pub const TABLES_RENAMED_TOTAL: &str = "sluice_capture_tables_renamed_total";
/// Rows read again on request (`sluice verify --repair`, see `capture/src/postgres/reread.rs`),
/// labels `source`, `table`, `outcome`: `read` (published as a read), `deleted` (the source no
/// longer has the key: published as a delete), `skipped` (a change touched it meanwhile and
/// carries it), `refused` (the request could not be served; the log says why).
pub const REREAD_ROWS_TOTAL: &str = "sluice_capture_reread_rows_total";
/// Source epochs begun, labels `source`, `reason` (`new_state`: no capture state, a first
/// start or a record deleted to read the source anew; `identity`: the source is another
/// server or timeline than the one last read). See `capture/src/epoch.rs`.
pub const EPOCHS_TOTAL: &str = "sluice_capture_epochs_total";
/// Memory held by changes of open transactions waiting for their commit (MySQL/MariaDB XA
/// transactions, PostgreSQL transactions streamed while in progress), label `source`; bounded
/// by the source's `spill.memory_mb`.
pub const HELD_BYTES: &str = "sluice_capture_held_bytes";
/// Bytes of held changes written to spill files because the memory budget was used up,
/// label `source`.
pub const SPILLED_BYTES_TOTAL: &str = "sluice_capture_spilled_bytes_total";
/// PostgreSQL transactions the server streamed while they were in progress, labels `source`
/// and `outcome` (`committed`: published at their commit; `aborted`: dropped, nothing of them
/// published).
pub const STREAMED_TRANSACTIONS_TOTAL: &str = "sluice_capture_streamed_transactions_total";
/// Local mode: streamed transactions whose changes went to the routers while in progress,
/// labels `source` and `outcome` (`applied`: every sink committed them with their commit, so
/// nothing more was published; `after_commit`: published at their commit as usual instead — a
/// sink could not hold them, or capture could not vouch for them; logged with the reason).
pub const IN_PROGRESS_TRANSACTIONS_TOTAL: &str = "sluice_capture_in_progress_transactions_total";
/// Table schema versions registered (schema topic or registry), label `source`.
pub const SCHEMAS_PUBLISHED_TOTAL: &str = "sluice_capture_schemas_published_total";
/// New table schema versions refused by the compatibility policy, labels `source`, `table`.
pub const SCHEMA_INCOMPATIBLE_TOTAL: &str = "sluice_capture_schema_incompatible_total";

/// Seconds between now and the timestamp of the last binlog event read, label `source`.
pub const BINLOG_LAG_SECONDS: &str = "sluice_capture_binlog_lag_seconds";
/// Offset within its file of the binlog checkpoint written (everything before it is
/// acknowledged by Kafka), label `source`.
pub const BINLOG_CONFIRMED_POSITION: &str = "sluice_capture_binlog_confirmed_position";

/// Rows read by the initial snapshot, labels `source`, `table`.
pub const SNAPSHOT_ROWS_TOTAL: &str = "sluice_capture_snapshot_rows_total";
/// Rows a table's snapshot expects to read: the catalog's estimate when it starts, the rows
/// read once it finishes; labels `source`, `table`.
pub const SNAPSHOT_ROWS_EXPECTED: &str = "sluice_capture_snapshot_rows_expected";
/// 1 once a table's snapshot finished in this process, 0 while it runs; labels `source`, `table`.
pub const SNAPSHOT_TABLE_DONE: &str = "sluice_capture_snapshot_table_done";
/// Binlog file sequence number (`mysql-bin.000042` → 42) of the checkpoint written, label
/// `source`.
pub const BINLOG_CONFIRMED_FILE: &str = "sluice_capture_binlog_confirmed_file";
/// Tables whose snapshot has not finished yet, label `source`.
pub const SNAPSHOT_TABLES_REMAINING: &str = "sluice_capture_snapshot_tables_remaining";
/// Changes the stream skipped because the table's snapshot already contains them, label `source`.
pub const SNAPSHOT_SKIPPED_CHANGES_TOTAL: &str = "sluice_capture_snapshot_skipped_changes_total";

/// A table's snapshot starts; `estimate` is the catalog's row count, when it has one.
pub fn snapshot_started(source: &str, table: &str, estimate: Option<f64>) {
    let labels = [("source", source.to_string()), ("table", table.to_string())];
    metrics::gauge!(SNAPSHOT_TABLE_DONE, &labels).set(0.0);
    if let Some(rows) = estimate.filter(|r| *r >= 0.0) {
        metrics::gauge!(SNAPSHOT_ROWS_EXPECTED, &labels).set(rows);
    }
}

/// A table's snapshot finished after reading `rows`.
pub fn snapshot_finished(source: &str, table: &str, rows: u64) {
    let labels = [("source", source.to_string()), ("table", table.to_string())];
    metrics::gauge!(SNAPSHOT_ROWS_EXPECTED, &labels).set(rows as f64);
    metrics::gauge!(SNAPSHOT_TABLE_DONE, &labels).set(1.0);
}

/// Registers descriptions; call once per process.
pub fn describe() {
    describe_counter!(
        EPOCHS_TOTAL,
        Unit::Count,
        "Source epochs begun (positions that sort above every earlier one)"
    );
    describe_counter!(
        EVENTS_TOTAL,
        Unit::Count,
        "Row change events published to Kafka"
    );
    describe_counter!(TRANSACTIONS_TOTAL, Unit::Count, "Source transactions read");
    describe_gauge!(
        HELD_BYTES,
        Unit::Bytes,
        "Memory held by changes of open transactions waiting for their commit"
    );
    describe_counter!(
        IN_PROGRESS_TRANSACTIONS_TOTAL,
        Unit::Count,
        "Streamed transactions handed to the routers while in progress, by outcome"
    );
    describe_counter!(
        STREAMED_TRANSACTIONS_TOTAL,
        Unit::Count,
        "PostgreSQL transactions streamed while in progress, by outcome"
    );
    describe_counter!(
        SPILLED_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes of held changes written to spill files past spill.memory_mb"
    );
    describe_gauge!(
        TABLE_STOPPED,
        "1 while a configured table is stopped: its changes are not captured"
    );
    describe_counter!(
        STOPPED_TABLE_CHANGES_TOTAL,
        Unit::Count,
        "Changes of stopped tables that capture did not publish"
    );
    describe_counter!(
        TABLES_RENAMED_TOTAL,
        Unit::Count,
        "Captured tables renamed at the source and followed under their configured names"
    );
    describe_counter!(
        REREAD_ROWS_TOTAL,
        Unit::Count,
        "Rows read again on request (sluice verify --repair), by outcome"
    );
    describe_counter!(
        BYTES_TOTAL,
        Unit::Bytes,
        "Bytes of Avro key and value published"
    );
    describe_gauge!(CONFIRMED_LSN, "LSN confirmed to the replication slot");
    describe_gauge!(
        SLOT_LAG_BYTES,
        Unit::Bytes,
        "Server WAL end minus the confirmed LSN"
    );
    describe_counter!(
        RECORDS_ACKNOWLEDGED_TOTAL,
        Unit::Count,
        "Records (events and tombstones) whose delivery Kafka acknowledged"
    );
    describe_gauge!(
        INFLIGHT_EVENTS,
        Unit::Count,
        "Events awaiting Kafka acknowledgement"
    );
    describe_gauge!(
        BINLOG_LAG_SECONDS,
        Unit::Seconds,
        "Age of the last binlog event read"
    );
    describe_gauge!(
        BINLOG_CONFIRMED_POSITION,
        "Binlog offset of the checkpoint written to the state topic"
    );
    describe_gauge!(
        BINLOG_CONFIRMED_FILE,
        "Binlog file sequence number of the checkpoint written to the state topic"
    );
    describe_counter!(
        SNAPSHOT_ROWS_TOTAL,
        Unit::Count,
        "Rows read by the initial snapshot"
    );
    describe_gauge!(
        SNAPSHOT_ROWS_EXPECTED,
        Unit::Count,
        "Rows a table's snapshot expects: the catalog's estimate, then the rows read"
    );
    describe_gauge!(
        SNAPSHOT_TABLE_DONE,
        "1 once the table's snapshot finished in this process"
    );
    describe_gauge!(
        SNAPSHOT_TABLES_REMAINING,
        Unit::Count,
        "Tables whose snapshot has not finished"
    );
    describe_counter!(
        SNAPSHOT_SKIPPED_CHANGES_TOTAL,
        Unit::Count,
        "Streamed changes already in the table's snapshot"
    );
    describe_counter!(ERRORS_TOTAL, Unit::Count, "Capture errors by kind");
    describe_counter!(
        SCHEMAS_PUBLISHED_TOTAL,
        Unit::Count,
        "Table schema versions registered"
    );
    describe_counter!(
        SCHEMA_INCOMPATIBLE_TOTAL,
        Unit::Count,
        "New table schema versions refused by the compatibility policy"
    );
}
