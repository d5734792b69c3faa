//! Sink metric names (see METRICS.md).

use metrics::{describe_counter, describe_histogram, Unit};

/// Changes applied, labels `sink`, `table`, `op`.
pub const EVENTS_APPLIED_TOTAL: &str = "sluice_sink_events_applied_total";
/// Changes skipped as already applied (replays), label `sink`.
pub const EVENTS_SKIPPED_TOTAL: &str = "sluice_sink_events_skipped_total";
/// Batch commit duration, label `sink`.
pub const BATCH_DURATION_SECONDS: &str = "sluice_sink_batch_duration_seconds";
/// Changes per batch, label `sink`.
pub const BATCH_ROWS: &str = "sluice_sink_batch_rows";
/// Batches refused as a whole with no change refused on its own (a unique-value swap, rows
/// bound by a foreign key), applied in pieces in order instead, label `sink`.
pub const BATCHES_SPLIT_TOTAL: &str = "sluice_sink_batches_split_total";
/// Changes written into transactions still in progress at the source (local mode), label
/// `sink`; counted in `sluice_sink_events_applied_total` once such a transaction commits.
pub const PROVISIONAL_ROWS_TOTAL: &str = "sluice_sink_provisional_rows_total";
/// Tables created or altered, labels `sink`, `table`, `ddl`.
pub const DDL_TOTAL: &str = "sluice_sink_ddl_total";
/// Row changes written under a table's older key after changes under its newer one (a key
/// changed at the source), labels `sink`, `table`.
pub const OLDER_KEY_CHANGES_TOTAL: &str = "sluice_sink_older_key_changes_total";

pub fn describe() {
    describe_counter!(
        EVENTS_APPLIED_TOTAL,
        Unit::Count,
        "Row changes applied to the sink"
    );
    describe_counter!(
        EVENTS_SKIPPED_TOTAL,
        Unit::Count,
        "Row changes skipped because already applied"
    );
    describe_histogram!(
        BATCH_DURATION_SECONDS,
        Unit::Seconds,
        "Time to apply and commit one batch"
    );
    describe_histogram!(BATCH_ROWS, Unit::Count, "Row changes per batch");
    describe_counter!(
        BATCHES_SPLIT_TOTAL,
        Unit::Count,
        "Batches refused as a whole and applied in pieces, in order"
    );
    describe_counter!(
        PROVISIONAL_ROWS_TOTAL,
        Unit::Count,
        "Row changes written into transactions still in progress at the source"
    );
    describe_counter!(DDL_TOTAL, Unit::Count, "Sink tables created or altered");
    describe_counter!(
        OLDER_KEY_CHANGES_TOTAL,
        Unit::Count,
        "Row changes written under a table's older key after changes under its newer one"
    );
}
