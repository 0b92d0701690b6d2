//! Futures boxed where they are built.
//!
//! `Box::pin(fut)` builds the future on the stack and then copies all of it into the box:
//! for a large async fn's state (the transaction's is 848 bytes) that writes every cache line
//! of a block that, with many sessions in flight, is cold. Allocating first and building the
//! future in the block writes only what its first state holds (see benches/README).

use std::future::Future;
use std::pin::Pin;

/// `Box::pin(make())`, with the future written into the allocation instead of copied there.
#[inline(always)]
pub fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let slot = Box::<F>::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}
