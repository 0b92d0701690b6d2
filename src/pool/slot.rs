//! A slot is one unit of backend capacity, counted at the pool, the database and the global
//! level at once. A slot exists from the moment sluice decides to connect until the backend is
//! closed; dropping it gives the capacity back and wakes whoever waits for it. That makes the
//! caps hold whatever path a connection takes out of the pool, panics included.

use std::sync::Weak;

use super::PoolSet;

pub struct Slot {
    set: Weak<PoolSet>,
    pool: usize,
    /// False once the capacity has been handed back by hand (under the pool lock).
    armed: bool,
}

impl Slot {
    /// Only the pool creates slots, under its lock, after counting them.
    pub(super) fn counted(set: Weak<PoolSet>, pool: usize) -> Slot {
        Slot {
            set,
            pool,
            armed: true,
        }
    }

    /// A slot that counts nothing, left behind in a backend whose slot moved elsewhere.
    pub(super) fn empty() -> Slot {
        Slot {
            set: Weak::new(),
            pool: usize::MAX,
            armed: false,
        }
    }

    pub fn pool(&self) -> usize {
        self.pool
    }

    /// Forget this slot without releasing it: the caller has already uncounted it, or moved
    /// its count elsewhere, under the lock.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Recount this slot for another pool (the caller moved the counts under the lock).
    pub(super) fn move_to(&mut self, pool: usize) {
        self.pool = pool;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            if let Some(set) = self.set.upgrade() {
                set.release(self.pool);
            }
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot(pool {}, armed {})", self.pool, self.armed)
    }
}
