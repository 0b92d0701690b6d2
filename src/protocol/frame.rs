//! Framing: every message after startup is a tag byte and a big-endian length that counts
//! itself. The walker moves through a buffer frame by frame and decides, per tag, whether the
//! whole frame must be in memory (a message sluice inspects) or can stream through in pieces.

/// Length of a regular message header: tag plus the 4-byte length.
pub const HEADER_LEN: usize = 5;

/// Read a header at the start of `buf`: the tag and the frame's total length including the tag.
/// `None` while fewer than five bytes are available. A length below 4 is malformed and reported
/// as `Some((tag, 0))`.
#[inline]
pub fn header(buf: &[u8]) -> Option<(u8, usize)> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Some((buf[0], 0));
    }
    Some((buf[0], len + 1))
}

/// What the walker found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing more can be decided until more bytes arrive.
    NeedMore,
    /// A whole frame of an inspected tag, `len` bytes at the walk position.
    Whole { tag: u8, len: usize },
    /// The start of a frame that streams through: `len` bytes at the walk position belong to
    /// it and may be passed on now (the first piece of it, or all of it).
    Start { tag: u8, len: usize },
    /// More bytes of a streaming frame.
    Continue { len: usize },
    /// The frame's declared length is impossible or over the limit.
    Malformed { tag: u8, declared: usize },
}

/// Walks frames in a byte stream that arrives in pieces. Keeps only the count of bytes left in
/// a streaming frame, so frames larger than any buffer pass through without being held.
#[derive(Debug, Default)]
pub struct FrameWalker {
    /// Bytes of the current streaming frame not yet walked.
    remaining: usize,
    /// Largest frame accepted (0 = no limit).
    max_len: usize,
}

impl FrameWalker {
    pub fn new(max_len: usize) -> FrameWalker {
        FrameWalker {
            remaining: 0,
            max_len,
        }
    }

    /// True when the walk position is at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Decide the next step for `buf`, which holds the unwalked bytes. `inspect(tag)` says
    /// whether a tag's frames must be whole. The caller consumes the returned length.
    #[inline]
    pub fn step(&mut self, buf: &[u8], inspect: impl Fn(u8) -> bool) -> Step {
        if self.remaining > 0 {
            if buf.is_empty() {
                return Step::NeedMore;
            }
            let len = self.remaining.min(buf.len());
            self.remaining -= len;
            return Step::Continue { len };
        }
        let Some((tag, total)) = header(buf) else {
            return Step::NeedMore;
        };
        if total == 0 || (self.max_len > 0 && total > self.max_len) {
            return Step::Malformed {
                tag,
                declared: total.saturating_sub(1),
            };
        }
        if inspect(tag) {
            if buf.len() < total {
                return Step::NeedMore;
            }
            return Step::Whole { tag, len: total };
        }
        let len = total.min(buf.len());
        self.remaining = total - len;
        Step::Start { tag, len }
    }
}

/// The body of a whole frame (after the 5-byte header).
#[inline]
pub fn body(frame: &[u8]) -> &[u8] {
    &frame[HEADER_LEN..]
}

/// Read a NUL-terminated string at the start of `buf`; returns it and the rest after the NUL.
pub fn cstr(buf: &[u8]) -> Option<(&str, &[u8])> {
    let (s, rest) = cstr_bytes(buf)?;
    Some((std::str::from_utf8(s).ok()?, rest))
}

/// A NUL-terminated string as its bytes, whatever their encoding, and what follows it. SQL
/// text and statement names come in the client's `client_encoding`, which need not be UTF-8.
pub fn cstr_bytes(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    // Empty names (the unnamed statement and portal) are the common case, and memchr's
    // setup costs more than the one byte.
    if let Some((0, rest)) = buf.split_first() {
        return Some((&[], rest));
    }
    let end = memchr::memchr(0, buf)?;
    Some((&buf[..end], &buf[end + 1..]))
}

/// A name or text from a client, for a message sluice writes itself: as it is when it is
/// UTF-8, else with every byte past ASCII written `\xNN`, so the message stays ASCII and reads
/// the same in any client encoding.
pub fn printable(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.into(),
        Err(_) => bytes.escape_ascii().to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(header(b"Q\0\0\0"), None);
        assert_eq!(header(&frame(b'Q', b"abc\0")), Some((b'Q', 9)));
        assert_eq!(header(b"Q\0\0\0\x03"), Some((b'Q', 0)));
    }

    #[test]
    fn whole_frames_wait_for_all_bytes() {
        let f = frame(b'Z', b"I");
        let mut w = FrameWalker::new(0);
        assert_eq!(w.step(&f[..5], |_| true), Step::NeedMore);
        assert_eq!(w.step(&f, |_| true), Step::Whole { tag: b'Z', len: 6 });
    }

    #[test]
    fn streaming_frames_pass_in_pieces() {
        let f = frame(b'd', &[7u8; 100]);
        let mut w = FrameWalker::new(0);
        assert_eq!(
            w.step(&f[..40], |_| false),
            Step::Start { tag: b'd', len: 40 }
        );
        assert!(!w.at_boundary());
        assert_eq!(w.step(&f[40..70], |_| false), Step::Continue { len: 30 });
        let mut rest = f[70..].to_vec();
        rest.extend(frame(b'c', b""));
        assert_eq!(w.step(&rest, |_| false), Step::Continue { len: 35 });
        assert!(w.at_boundary());
        assert_eq!(
            w.step(&rest[35..], |_| false),
            Step::Start { tag: b'c', len: 5 }
        );
    }

    #[test]
    fn oversized_and_short_lengths_are_malformed() {
        let f = frame(b'Q', &[b'x'; 2000]);
        let mut w = FrameWalker::new(1024);
        assert_eq!(
            w.step(&f, |_| false),
            Step::Malformed {
                tag: b'Q',
                declared: 2004
            }
        );
        let mut w = FrameWalker::new(0);
        assert!(matches!(
            w.step(b"Q\0\0\0\x01", |_| false),
            Step::Malformed { .. }
        ));
    }

    #[test]
    fn printable_names_stay_as_sent_when_utf8_and_ascii_when_not() {
        assert_eq!(printable("café".as_bytes()), "café");
        assert_eq!(printable(b"caf\xe9"), "caf\\xe9");
    }

    #[test]
    fn cstr_splits_at_nul() {
        assert_eq!(cstr(b"abc\0rest"), Some(("abc", &b"rest"[..])));
        assert_eq!(cstr(b"abc"), None);
    }
}
