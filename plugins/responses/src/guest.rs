//! The wasm component: the same glue for both backends, over this crate's protocol logic.

// The generated bindings have a 15-argument lowering function.
#![allow(clippy::too_many_arguments)]

include!("../../common/src/guest.rs.in");
