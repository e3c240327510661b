//! Tools for plugin authors: the harness behind `swapbot plugin test` and recording a real turn
//! as a case file.

pub mod harness;
