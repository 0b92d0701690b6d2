//! The configuration in force, as one reload stored it, and a client's copy of it that costs
//! one atomic read to keep current.
//!
//! An arc-swap load is cheap but not free (a debt-slot claim and release, about 70
//! instructions), and a transaction asked for the configuration five times. A `Held` copy checks
//! a generation number instead and reloads only after a reload has stored a new one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

/// A value swapped whole by reloads, with a count of the swaps.
pub struct Live<T> {
    value: ArcSwap<T>,
    generation: AtomicU64,
}

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live {
            value: ArcSwap::from_pointee(value),
            generation: AtomicU64::new(0),
        }
    }

    pub fn load(&self) -> Guard<Arc<T>> {
        self.value.load()
    }

    pub fn load_full(&self) -> Arc<T> {
        self.value.load_full()
    }

    /// Put `value` in force. A `Held` copy that has seen the new generation sees `value` (or a
    /// later one).
    pub fn store(&self, value: Arc<T>) {
        self.value.store(value);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// A copy of the value in force, to keep and `refresh`.
    pub fn hold(&self) -> Held<T> {
        // The generation first: a store between the two reads leaves the copy one generation
        // behind its value, so the next refresh reloads, which is harmless.
        let generation = self.generation.load(Ordering::Acquire);
        Held {
            value: self.load_full(),
            generation,
        }
    }
}

/// One holder's copy of a `Live` value.
pub struct Held<T> {
    value: Arc<T>,
    generation: u64,
}

impl<T> Held<T> {
    /// The value in force now: the copy, reloaded first if a reload stored a newer one.
    #[inline]
    pub fn refresh(&mut self, live: &Live<T>) -> &Arc<T> {
        if live.generation.load(Ordering::Acquire) != self.generation {
            *self = live.hold();
        }
        &self.value
    }

    /// The copy as last refreshed.
    pub fn get(&self) -> &Arc<T> {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_follows_every_store_and_keeps_its_value_between_them() {
        let live = Live::new(1);
        let mut copy = live.hold();
        assert_eq!(**copy.refresh(&live), 1);
        let before = Arc::as_ptr(copy.get());
        assert_eq!(
            Arc::as_ptr(copy.refresh(&live)),
            before,
            "no store: no reload"
        );
        live.store(Arc::new(2));
        assert_eq!(**copy.get(), 1, "not refreshed yet");
        assert_eq!(**copy.refresh(&live), 2);
        live.store(Arc::new(3));
        live.store(Arc::new(4));
        assert_eq!(**copy.refresh(&live), 4);
    }
}
