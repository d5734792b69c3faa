//! Where the router is in each partition it owns: what it has taken (or, on assignment, what
//! the sink had recorded), so a message read again is skipped and a message past a gap is not
//! taken before the gap is read again.

use std::collections::HashMap;

use crate::gaps::Gaps;
use crate::holds::Part;

/// What to do with a consumed message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// At or below what was taken (the sink has it, or it is read again after a seek back).
    Skip,
    /// Past a gap: read the partition again from this offset; the message is not taken.
    ReadAgainFrom(i64),
    Take,
}

/// Per owned partition, the last offset taken.
#[derive(Default)]
pub(crate) struct Reading {
    /// The last offset taken, or on assignment the sink's stored offset (-1: none).
    taken: HashMap<Part, i64>,
    /// Per partition, the last message skipped since [`Reading::take_skipped`]: committed to
    /// Kafka, so the group's offset (which librdkafka's consumer lag is measured from) does
    /// not stay behind messages that will never be applied.
    skipped: HashMap<Part, i64>,
    gaps: Gaps,
}

impl Reading {
    /// Whether the partition's first message came already.
    pub fn knows(&self, key: &Part) -> bool {
        self.taken.contains_key(key)
    }

    /// A newly assigned partition: `stored` is the last offset the sink recorded for it.
    pub fn assigned(&mut self, key: Part, stored: Option<i64>) {
        self.taken.insert(key, stored.unwrap_or(-1));
    }

    /// Decides about the message at `offset` of a known partition; a taken one becomes the
    /// partition's position.
    pub fn admit(&mut self, key: &Part, offset: i64) -> Admit {
        let taken = self.taken.get(key).copied().unwrap_or(-1);
        if offset <= taken {
            self.gaps.before(key);
            self.skipped.insert(key.clone(), offset);
            return Admit::Skip;
        }
        if taken >= 0 && offset > taken + 1 {
            if let Some(from) = self.gaps.past(key, taken + 1, offset) {
                return Admit::ReadAgainFrom(from);
            }
        }
        self.gaps.taken(key);
        self.taken.insert(key.clone(), offset);
        Admit::Take
    }

    /// The partitions with messages skipped since the last call, and the last of each.
    pub fn take_skipped(&mut self) -> HashMap<Part, i64> {
        std::mem::take(&mut self.skipped)
    }

    /// A partition this router no longer owns: its next owner reads the sink's offset.
    pub fn forget(&mut self, key: &Part) {
        self.taken.remove(key);
        self.skipped.remove(key);
        self.gaps.forget(key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn what_the_sink_has_is_skipped_and_a_gap_is_read_again_before_anything_past_it_is_taken() {
        let key: Part = (Arc::from("t"), 0);
        let mut r = Reading::default();
        assert!(!r.knows(&key));
        // The sink recorded up to 9: 8 and 9 arrive again and are skipped.
        r.assigned(key.clone(), Some(9));
        assert_eq!(r.admit(&key, 8), Admit::Skip);
        assert_eq!(r.admit(&key, 9), Admit::Skip);
        assert_eq!(r.take_skipped(), HashMap::from([(key.clone(), 9)]));
        assert!(r.take_skipped().is_empty());
        assert_eq!(r.admit(&key, 10), Admit::Take);
        // 11 is due and 20 comes: read again from just before, 20 not taken.
        assert_eq!(r.admit(&key, 20), Admit::ReadAgainFrom(10));
        // Read again from 10: 10 is skipped (taken already), 11 taken.
        assert_eq!(r.admit(&key, 10), Admit::Skip);
        assert_eq!(r.admit(&key, 11), Admit::Take);
        // Offsets that do not exist: after a message before the gap came, the jump is taken.
        assert_eq!(r.admit(&key, 15), Admit::ReadAgainFrom(11));
        assert_eq!(r.admit(&key, 11), Admit::Skip);
        assert_eq!(r.admit(&key, 15), Admit::Take);
    }

    #[test]
    fn a_partition_with_nothing_recorded_takes_its_first_message_whatever_its_offset() {
        let key: Part = (Arc::from("t"), 1);
        let mut r = Reading::default();
        r.assigned(key.clone(), None);
        // Retention may have deleted the start of the log: no gap before the first message.
        assert_eq!(r.admit(&key, 500), Admit::Take);
        r.forget(&key);
        assert!(!r.knows(&key));
    }
}
