//! The headers Sluice puts on a change message, read in one place: its [`Position`] and, for a
//! change published to every partition of its topic (a truncate), the barrier's width.

use rdkafka::message::{Headers, Message};
use sluice_schemas::event::{BARRIER_HEADER, POSITION_HEADER};
use sluice_schemas::Position;

/// The value of the header `key` of `msg`, when it has one.
fn header<'m>(msg: &'m impl Message, key: &str) -> Option<&'m [u8]> {
    msg.headers()?.iter().find(|h| h.key == key)?.value
}

/// The change's position ([`POSITION_HEADER`]); `None` when it is missing or malformed.
pub fn position(msg: &impl Message) -> Option<Position> {
    Position::from_header(header(msg, POSITION_HEADER)?)
}

/// How many partitions a barrier change was published to ([`BARRIER_HEADER`]); `None` for an
/// ordinary change.
pub fn barrier_width(msg: &impl Message) -> Option<i32> {
    std::str::from_utf8(header(msg, BARRIER_HEADER)?)
        .ok()?
        .parse()
        .ok()
}
