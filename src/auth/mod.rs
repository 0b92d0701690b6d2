//! Authentication math: password secrets as PostgreSQL stores them, md5, and SCRAM-SHA-256 for
//! both legs (sluice as server to clients, sluice as client to backends). No I/O and no awaits:
//! the session code drives these state machines and runs PBKDF2 on the blocking pool.

pub mod md5;
pub mod scram;
mod secret;

pub use secret::Secret;
