//! The one short sentence a user gets when a turn cannot be answered. It never carries the
//! backend's message, an id or anything technical (those go to the log).

use crate::runtime::{ChatError, ErrorKind};

pub const GENERIC: &str = "Sorry, something went wrong while answering. Please try again.";
pub const UNAVAILABLE: &str = "Sorry, the assistant is unavailable right now. Please try again later.";
pub const TOO_SLOW: &str = "The assistant took too long to answer. Please try again.";
pub const EMPTY: &str = "Sorry, I could not come up with an answer. Please rephrase your question.";
pub const CONTEXT_OVERFLOW: &str =
    "Your message is too long for me to read in one go. Please send a shorter one (or split it into parts).";
pub const BUSY: &str = "The assistant is busy right now. Please try again in a minute.";
pub const STILL_WORKING: &str = "I am still working on your previous message. Please wait a moment.";

pub fn for_error(error: &ChatError) -> &'static str {
    match error.kind {
        ErrorKind::ContextOverflow => CONTEXT_OVERFLOW,
        ErrorKind::RateLimited | ErrorKind::Quota => BUSY,
        ErrorKind::Timeout => TOO_SLOW,
        ErrorKind::SessionBusy => STILL_WORKING,
        ErrorKind::Auth | ErrorKind::Config | ErrorKind::ApiGone => UNAVAILABLE,
        _ => GENERIC,
    }
}
