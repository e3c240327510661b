//! What the host keeps for users: session ids per backend, the history a new session replays,
//! and the atomic-file primitives under `DATA_DIR` they are stored with.

pub mod files;
mod journal;
pub mod session;
pub mod store;

pub use files::*;
pub use session::*;
pub use store::{FileStore, PgSessionStore, SessionStore, StoreError, TurnLock};
