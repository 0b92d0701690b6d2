//! Admission control: who gets in at the door (client caps, connection rates, failed-login
//! limits, draining) and how much concurrent work a pool takes on (the adaptive limit). It
//! never touches the database: every refusal here costs microseconds.

pub mod adaptive;
pub mod codel;
pub mod door;

pub use door::{Admitted, Door, Refusal};
