//! Source epochs: positions that stay ordered when the source's own positions start over.
//!
//! A sink skips every change whose position is not above the highest it applied (that is how
//! replays are dropped). A source's positions can go backwards: a PostgreSQL cluster rebuilt
//! from a dump, a failover to a server on another timeline, a MySQL `RESET MASTER`, or capture
//! state deleted to read the source anew. Each of those begins a new *epoch*: every position
//! published in it is prefixed with `0xFF` and the epoch's start time (Unix milliseconds, 8
//! bytes big-endian), so it sorts above every position of earlier epochs — and above the
//! unprefixed positions of epoch 0 (records written before epochs were kept), whose first byte
//! is always below `0xFF` (an LSN's, or a binlog file number's, high byte). Within one epoch a
//! true replay still compares equal and is skipped.
//!
//! A promoted PostgreSQL standby is a new timeline of the same cluster: its WAL up to the
//! switch point is the old timeline's, byte for byte, and a failover slot carried to it replays
//! transactions capture already published. So a promotion's epoch *inherits* the positions
//! below its switch point ([`Inherited`]): a transaction committed there keeps the prefix it
//! was published with (its replay is skipped), and only what commits after the switch is
//! published with the new prefix (above anything the old timeline had past the switch).

use serde::{Deserialize, Serialize};
use sluice_schemas::Position;
use tracing::{info, warn};

use crate::metrics as m;

/// The epoch a capture publishes in, kept in its state record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    /// When the epoch began, Unix milliseconds; 0 for the epoch of a state record written
    /// before epochs were kept (its positions have no prefix).
    pub started_ms: u64,
    /// The source as capture identified it (PostgreSQL: system identifier and timeline;
    /// MySQL/MariaDB: server id, UUID and binlog base name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// History this epoch shares with earlier ones (after promotions), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherited: Vec<Inherited>,
}

/// Positions whose commit LSN is below `until_lsn` (a timeline's switch point) are published
/// in the epoch that began at `started_ms`, as they were before the promotion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inherited {
    pub until_lsn: u64,
    pub started_ms: u64,
}

impl Epoch {
    /// The epoch for this run, from the state record's (`None` when the record has none),
    /// whether there was a state record at all, and the source's identity now. `continues` is
    /// the switch point when the source is the stored identity's cluster promoted to a later
    /// timeline: its history below that point is the stored epoch's. Returns the epoch and
    /// whether it changed (so must be written to the state record before anything is
    /// published). A new epoch is logged and counted.
    pub fn decide(
        source: &str,
        stored: Option<&Epoch>,
        state_existed: bool,
        identity: &str,
        continues: Option<u64>,
    ) -> (Epoch, bool) {
        let begin = |reason: &'static str, since: u64| {
            let started_ms = now_ms().max(since + 1);
            metrics::counter!(m::EPOCHS_TOTAL, "source" => source.to_string(), "reason" => reason)
                .increment(1);
            Epoch {
                started_ms,
                identity: Some(identity.to_string()),
                inherited: Vec::new(),
            }
        };
        if !state_existed {
            let epoch = begin("new_state", 0);
            info!(source, epoch = epoch.started_ms, identity, "no capture state: a new source epoch begins (its positions sort above any published before)");
            return (epoch, true);
        }
        match stored {
            // A record from before epochs were kept: its positions stand as they are.
            None => (
                Epoch {
                    started_ms: 0,
                    identity: Some(identity.to_string()),
                    inherited: Vec::new(),
                },
                true,
            ),
            Some(e) => match e.identity.as_deref() {
                Some(known) if known == identity => (e.clone(), false),
                None => (
                    Epoch {
                        started_ms: e.started_ms,
                        identity: Some(identity.to_string()),
                        inherited: e.inherited.clone(),
                    },
                    true,
                ),
                Some(known) if continues.is_some() => {
                    let until_lsn = continues.unwrap_or_default();
                    let mut epoch = begin("promotion", e.started_ms);
                    epoch.inherited = e.inherited.clone();
                    epoch.inherited.push(Inherited {
                        until_lsn,
                        started_ms: e.started_ms,
                    });
                    warn!(source, before = known, now = identity, switch = until_lsn, epoch = epoch.started_ms, "the source is a promoted standby of the server capture last read: changes committed before the switch keep their positions (replays are skipped); later ones begin a new source epoch");
                    (epoch, true)
                }
                Some(known) => {
                    let epoch = begin("identity", e.started_ms);
                    warn!(source, before = known, now = identity, epoch = epoch.started_ms, "the source is another server or timeline than the one capture last read (rebuilt, failed over, or reset): a new source epoch begins, so its changes are not taken for replays of the old one's");
                    (epoch, true)
                }
            },
        }
    }

    /// The prefix of the positions published in this epoch (none in epoch 0), but for
    /// inherited ones ([`Epoch::prefix_for`]).
    pub fn prefix(&self) -> Option<[u8; 9]> {
        prefix_of(self.started_ms)
    }

    /// The prefix of `position` in this epoch: an inherited epoch's for a PostgreSQL
    /// position (commit LSN first) below a switch point, else this epoch's.
    pub fn prefix_for(&self, position: &Position) -> Option<[u8; 9]> {
        let lsn = position
            .0
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes);
        match self
            .inherited
            .iter()
            .find(|i| lsn.is_some_and(|lsn| lsn < i.until_lsn))
        {
            Some(i) => i.prefix(),
            None => self.prefix(),
        }
    }

    /// `position` as published in this epoch.
    pub fn apply(&self, position: &Position) -> Position {
        match self.prefix_for(position) {
            Some(p) => Position([&p[..], &position.0].concat()),
            None => position.clone(),
        }
    }
}

impl Inherited {
    /// The prefix of the positions below `until_lsn`.
    pub fn prefix(&self) -> Option<[u8; 9]> {
        prefix_of(self.started_ms)
    }
}

fn prefix_of(started_ms: u64) -> Option<[u8; 9]> {
    (started_ms > 0).then(|| {
        let mut p = [0xFF; 9];
        p[1..].copy_from_slice(&started_ms.to_be_bytes());
        p
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_epoch_sorts_above_every_earlier_position_and_a_replay_within_one_does_not() {
        let old = Position::postgres(0x0000_7fff_0000_0000, 9);
        let legacy = Epoch::default();
        assert_eq!(
            legacy.apply(&old),
            old,
            "epoch 0 publishes positions as they were"
        );
        // A rebuilt source restarts at a lower LSN; in a new epoch it still sorts above.
        let (first, changed) = Epoch::decide("s", None, false, "pg 1 tl 1", None);
        assert!(changed && first.started_ms > 0);
        let low = Position::postgres(0x16, 0);
        assert!(first.apply(&low) > old);
        let (same, changed) = Epoch::decide("s", Some(&first), true, "pg 1 tl 1", None);
        assert!(!changed);
        assert_eq!(
            same.apply(&low),
            first.apply(&low),
            "a replay compares equal"
        );
        let (next, changed) = Epoch::decide("s", Some(&first), true, "pg 1 tl 2", None);
        assert!(changed && next.started_ms > first.started_ms);
        assert!(next.apply(&low) > first.apply(&Position::postgres(u64::MAX >> 8, 0)));
        // MySQL positions begin with the binlog file number: below 0xFF too.
        assert!(first.apply(&Position::mysql(1, 4, 0)) > Position::mysql(999_999, u64::MAX, 0));
    }

    #[test]
    fn a_promotion_keeps_the_positions_below_its_switch_point_and_prefixes_the_rest_anew() {
        let (first, _) = Epoch::decide("s", None, false, "pg 1 tl 1", None);
        let before = Position::postgres(0x90, 3);
        let published = first.apply(&before);
        // Promoted at 0x100: what committed below it is the old timeline's, replayed.
        let (promoted, changed) = Epoch::decide("s", Some(&first), true, "pg 1 tl 2", Some(0x100));
        assert!(changed && promoted.started_ms > first.started_ms);
        assert_eq!(
            promoted.apply(&before),
            published,
            "a replay compares equal"
        );
        // Past it, above anything the old timeline published, even past the switch point.
        let after = Position::postgres(0x101, 0);
        assert!(promoted.apply(&after) > first.apply(&Position::postgres(0x5000, 0)));
        // A second promotion keeps both older ranges.
        let (again, _) = Epoch::decide("s", Some(&promoted), true, "pg 1 tl 3", Some(0x200));
        assert_eq!(again.apply(&before), published);
        assert_eq!(again.apply(&after), promoted.apply(&after));
        assert!(
            again.apply(&Position::postgres(0x200, 0))
                > promoted.apply(&Position::postgres(0x5000, 0))
        );
        // The state record keeps what was inherited.
        let json = serde_json::to_string(&again).unwrap();
        assert_eq!(serde_json::from_str::<Epoch>(&json).unwrap(), again);
    }

    #[test]
    fn a_state_record_from_before_epochs_keeps_its_positions_and_learns_the_identity() {
        let (epoch, changed) = Epoch::decide("s", None, true, "pg 1 tl 1", None);
        assert!(changed);
        assert_eq!(epoch.started_ms, 0);
        assert_eq!(epoch.identity.as_deref(), Some("pg 1 tl 1"));
    }
}
