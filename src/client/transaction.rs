//! Where a bound backend stands in the conversation: how many ReadyForQuery messages are still
//! owed, whether extended-protocol messages await a Sync, and the last transaction status.
//! From this alone the session decides when a backend may go back to the pool.

use crate::protocol::messages::ftag;

#[derive(Debug, Clone)]
pub struct TxState {
    /// Query, Sync and FunctionCall messages sent whose ReadyForQuery has not arrived.
    pending: u32,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// Syncs sent since the last Execute; a server in COPY IN ignores them.
    syncs_since_execute: u32,
    /// Status byte of the last ReadyForQuery: 'I' idle, 'T' in a transaction, 'E' failed.
    status: u8,
}

impl Default for TxState {
    fn default() -> Self {
        TxState {
            pending: 0,
            unsynced: false,
            syncs_since_execute: 0,
            status: b'I',
        }
    }
}

impl TxState {
    /// Account for a message the client sent to the backend.
    pub fn on_client(&mut self, tag: u8) {
        match tag {
            ftag::QUERY | ftag::FUNCTION_CALL => {
                self.pending += 1;
                self.syncs_since_execute = 0;
            }
            ftag::SYNC => {
                self.pending += 1;
                self.unsynced = false;
                self.syncs_since_execute += 1;
            }
            ftag::EXECUTE => {
                self.unsynced = true;
                self.syncs_since_execute = 0;
            }
            ftag::PARSE | ftag::BIND | ftag::DESCRIBE | ftag::CLOSE | ftag::FLUSH => {
                self.unsynced = true
            }
            // PostgreSQL ignores a Sync that arrives while it is in COPY IN (drivers send one
            // right after Execute). Once the copy ends, those Syncs will never be answered.
            ftag::COPY_DONE | ftag::COPY_FAIL => {
                self.pending = self.pending.saturating_sub(self.syncs_since_execute);
                self.syncs_since_execute = 0;
            }
            _ => {}
        }
    }

    /// Account for a ReadyForQuery from the backend.
    pub fn on_ready(&mut self, status: u8) {
        self.pending = self.pending.saturating_sub(1);
        self.status = status;
    }

    /// Nothing owed and no transaction open: the backend may serve someone else.
    pub fn idle(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.status == b'I'
    }

    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    pub fn pending(&self) -> u32 {
        self.pending
    }

    pub fn status(&self) -> u8 {
        self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(tx: &mut TxState, tags: &[u8]) {
        tags.iter().for_each(|&t| tx.on_client(t));
    }

    #[test]
    fn simple_query_round_trip() {
        let mut tx = TxState::default();
        feed(&mut tx, b"Q");
        assert!(!tx.idle());
        tx.on_ready(b'T');
        assert!(!tx.idle() && tx.pending() == 0 && tx.status() == b'T');
        feed(&mut tx, b"Q");
        tx.on_ready(b'I');
        assert!(tx.idle());
    }

    #[test]
    fn pipelined_syncs_need_every_ready() {
        let mut tx = TxState::default();
        feed(&mut tx, b"PBESPBES");
        tx.on_ready(b'I');
        assert!(!tx.idle());
        tx.on_ready(b'I');
        assert!(tx.idle());
    }

    #[test]
    fn flush_without_sync_keeps_the_backend() {
        let mut tx = TxState::default();
        feed(&mut tx, b"PBEH");
        assert!(!tx.idle() && tx.unsynced());
    }

    #[test]
    fn simple_copy_after_extended_query_still_owes_its_ready() {
        let mut tx = TxState::default();
        feed(&mut tx, b"PBES");
        tx.on_ready(b'I');
        feed(&mut tx, b"Qddc");
        assert!(!tx.idle());
        tx.on_ready(b'I');
        assert!(tx.idle());
    }

    #[test]
    fn sync_during_copy_in_is_not_owed() {
        let mut tx = TxState::default();
        // tokio-postgres: Bind, Execute, Sync, then CopyData..., CopyDone, Sync.
        feed(&mut tx, b"BESddcS");
        tx.on_ready(b'I');
        assert!(tx.idle());
    }
}
