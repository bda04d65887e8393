//! gravity's log lines: parsing the three formats gravity writes ([`record`]) and classifying
//! each line by component and cause ([`classify`]). Pure functions; the follower that reads
//! the file is [`crate::follow`].

pub mod classify;
pub mod entry;
pub mod record;
