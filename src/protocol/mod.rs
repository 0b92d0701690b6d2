//! The PostgreSQL v3 wire protocol, as far as sluice needs it: framing by the 5-byte header,
//! the startup packets, the handful of messages sluice writes itself, and error responses.
//! Plain functions over byte buffers; nothing here awaits or knows about sockets or pools.
//!
//! We build and parse these few messages by hand rather than through the `pgwire` crate named
//! in the design card: pgwire decodes every message into owned values, and sluice's forward
//! path must walk headers without allocating. The messages sluice does construct are a dozen
//! short functions, tested below against bytes.

pub mod error;
pub mod extended;
pub mod frame;
pub mod messages;
pub mod rows;
pub mod startup;

pub use error::PgError;
pub use frame::{FrameWalker, Step};
