//! Router metric names (see METRICS.md).

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Kafka messages consumed, label `topic`.
pub const MESSAGES_CONSUMED_TOTAL: &str = "sluice_router_messages_consumed_total";
/// Messages at or below the offset the sink had stored when their partition was assigned
/// (already applied; read again after a restart or rebalance), skipped, label `topic`.
pub const MESSAGES_SKIPPED_TOTAL: &str = "sluice_router_messages_skipped_total";
/// Messages sent to the dead-letter topic, labels `topic`, `reason`.
pub const DLQ_TOTAL: &str = "sluice_router_dlq_total";
/// Batches committed to the sink, label `sink`.
pub const BATCHES_TOTAL: &str = "sluice_router_batches_total";
/// Errors by kind (`transient`, `definite`), label `sink`.
pub const ERRORS_TOTAL: &str = "sluice_router_errors_total";
/// 1 while the sink cannot take a table (its changes held, its partitions paused), label
/// `table`; 0 once it takes it again.
pub const TABLE_BLOCKED: &str = "sluice_router_table_blocked";
/// Partitions found stalled with messages after their fetch position and read again from
/// earlier, label `topic` (a broker answering a fetch inside a record batch with nothing).
pub const FETCH_STALLS_TOTAL: &str = "sluice_router_fetch_stalls_total";
/// Messages that arrived past the offset a partition had to go on from, label `topic` and
/// `kind`: `read_again` (the broker skipped messages, as Tansu 0.6's memory storage does for a
/// fetch that starts inside a record batch; the router read the partition again from earlier
/// and took nothing past the gap) or `absent` (the offsets do not exist on the broker: deleted
/// by retention before the router read them, compacted, or transaction markers).
pub const OFFSET_GAPS_TOTAL: &str = "sluice_router_offset_gaps_total";
/// Times a partition reached a truncate that other partitions of its topic had not reached
/// yet and waited (the sink applies it once all have), label `topic`.
pub const BARRIER_WAITS_TOTAL: &str = "sluice_router_barrier_waits_total";
/// Times a change the sink refused for a row it refers to (a foreign key) made its partition
/// wait for the other tables' changes, label `table`.
pub const MISSING_ROW_WAITS_TOTAL: &str = "sluice_router_missing_row_waits_total";
/// Mapping schemes in use.
pub const SCHEMES_ACTIVE: &str = "sluice_router_schemes_active";
/// Scheme files reloaded after a change, label `result` (`applied`, `rejected`: invalid, the
/// running scheme kept).
pub const SCHEME_RELOADS_TOTAL: &str = "sluice_router_scheme_reloads_total";
/// Schemas loaded from the schema topic.
pub const SCHEMAS_LOADED_TOTAL: &str = "sluice_router_schemas_loaded_total";
/// Messages in the topic not yet committed by this router (summed over its partitions),
/// label `topic`; from librdkafka's statistics every 5 s.
pub const CONSUMER_LAG: &str = "sluice_router_consumer_lag_messages";
/// Commit time of the last applied event at the source, as Unix seconds, label `sink`.
pub const LAST_SOURCE_TS_SECONDS: &str = "sluice_router_last_applied_source_timestamp_seconds";

/// Seconds a collected batch waited for the batch before it to commit (the sink applies one
/// batch while the router collects the next), label `sink`. Its rate near 1 means the sink is
/// the bottleneck; near 0, consuming and decoding are.
pub const SINK_WAIT_SECONDS: &str = "sluice_router_sink_wait_seconds";

/// Transactions applied at the sink while still in progress at the source (local mode), by
/// how they ended, labels `sink` and `outcome`: `committed` (at their commit, with everything
/// before them), `replayed` (the sink had them: rolled back), `aborted` (at the source, or let
/// go by capture, which publishes them after their commit),
/// `abandoned` (rolled back, and applied after their commit instead; logged with the reason).
pub const PROVISIONAL_TRANSACTIONS_TOTAL: &str = "sluice_router_provisional_transactions_total";

pub fn describe() {
    describe_counter!(
        PROVISIONAL_TRANSACTIONS_TOTAL,
        Unit::Count,
        "Transactions applied at the sink while in progress at the source, by outcome"
    );
    describe_histogram!(
        SINK_WAIT_SECONDS,
        Unit::Seconds,
        "Time a collected batch waited for the previous batch to commit"
    );
    describe_gauge!(SCHEMES_ACTIVE, Unit::Count, "Mapping schemes in use");
    describe_counter!(
        FETCH_STALLS_TOTAL,
        Unit::Count,
        "Stalled partition fetches read again from earlier"
    );
    describe_counter!(
        OFFSET_GAPS_TOTAL,
        Unit::Count,
        "Messages that arrived past the offset their partition had to go on from"
    );
    describe_counter!(
        MISSING_ROW_WAITS_TOTAL,
        Unit::Count,
        "Changes refused for a row they refer to (a foreign key) whose partition waited"
    );
    describe_counter!(
        BARRIER_WAITS_TOTAL,
        Unit::Count,
        "Partitions that waited at a truncate for the other partitions of their topic"
    );
    describe_gauge!(
        TABLE_BLOCKED,
        Unit::Count,
        "1 while the sink cannot take a table and its changes are held"
    );
    describe_counter!(
        SCHEME_RELOADS_TOTAL,
        Unit::Count,
        "Scheme files reloaded after a change, by result"
    );
    describe_counter!(
        MESSAGES_CONSUMED_TOTAL,
        Unit::Count,
        "Kafka messages consumed"
    );
    describe_counter!(
        MESSAGES_SKIPPED_TOTAL,
        Unit::Count,
        "Messages already applied, skipped on resume"
    );
    describe_counter!(
        DLQ_TOTAL,
        Unit::Count,
        "Messages sent to the dead-letter topic"
    );
    describe_counter!(BATCHES_TOTAL, Unit::Count, "Batches committed to the sink");
    describe_counter!(ERRORS_TOTAL, Unit::Count, "Router errors by kind");
    describe_counter!(
        SCHEMAS_LOADED_TOTAL,
        Unit::Count,
        "Schemas loaded from the schema topic"
    );
    describe_gauge!(
        CONSUMER_LAG,
        Unit::Count,
        "Messages behind the end of each topic, over this router's partitions"
    );
    describe_gauge!(
        LAST_SOURCE_TS_SECONDS,
        Unit::Seconds,
        "Source commit time of the last applied event"
    );
}
