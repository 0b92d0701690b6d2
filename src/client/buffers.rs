//! Read buffers for client sessions. An idle client holds none (that keeps 10,000 idle
//! clients small), so every transaction used to allocate a fresh one, and once it was split
//! into frames, a second allocation for the shared header. Emptied buffers now wait in a
//! short per-thread list for the next transaction on that thread.

use std::cell::RefCell;

use bytes::BytesMut;

use super::pump::READ_SIZE;

/// Spare buffers kept per thread: enough for the sessions one thread runs transactions for
/// at once, at most 1 MiB.
const KEEP: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A buffer with room for at least `READ_SIZE` more bytes: a spare one if the thread has one.
pub fn take() -> BytesMut {
    let mut buf = SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    buf.reserve(READ_SIZE);
    buf
}

/// Keep an emptied buffer for the next `take` on this thread. Only a buffer that no frame
/// still points into and that was not grown past `2 * READ_SIZE` is kept; the rest are freed.
pub fn give_back(mut buf: BytesMut) {
    if !buf.is_empty() || !buf.try_reclaim(READ_SIZE) || buf.capacity() > 2 * READ_SIZE {
        return;
    }
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < KEEP {
            spare.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn spares() -> usize {
        SPARE.with(|s| s.borrow().len())
    }

    #[test]
    fn a_given_back_buffer_is_taken_again_without_a_new_allocation() {
        let mut buf = take();
        buf.put_slice(b"Q\0\0\0\x0dselect 1\0");
        let frame = buf.split_to(14);
        drop(frame);
        let ptr = buf.as_ptr();
        let before = spares();
        give_back(buf);
        assert_eq!(spares(), before + 1);
        let again = take();
        assert!(again.capacity() >= READ_SIZE);
        // The same allocation, reclaimed from its start.
        assert_eq!(again.as_ptr(), unsafe { ptr.sub(14) });
        assert_eq!(spares(), before);
    }

    #[test]
    fn buffers_still_pointed_into_grown_or_holding_data_are_not_kept() {
        let before = spares();
        let mut shared = take();
        shared.put_slice(b"abc");
        let frame = shared.split_to(3).freeze();
        give_back(shared);
        assert_eq!(spares(), before, "a frame still points into it");
        drop(frame);

        let mut big = take();
        big.reserve(4 * READ_SIZE);
        give_back(big);
        assert_eq!(spares(), before, "grown past 2 * READ_SIZE");

        let mut full = take();
        full.put_slice(b"unread");
        give_back(full);
        assert_eq!(spares(), before, "holds unread bytes");
    }
}
