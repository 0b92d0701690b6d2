//! Which backend reply answers which client message. PostgreSQL answers messages in order,
//! and after an error in an extended-protocol batch it answers nothing more until Sync. With
//! that, sluice can answer some client messages itself (a Parse of a statement the backend
//! already has), slip in messages of its own (a Parse before a Bind on a backend that lacks
//! the statement) and swallow their replies, while the client sees exactly what PostgreSQL
//! would have sent.

use std::collections::VecDeque;

use bytes::Bytes;

/// A client (or sluice) message whose reply is still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `stmt`: the shared statement it prepares, if named.
    Parse {
        stmt: Option<u64>,
    },
    /// `stmt`: the shared statement it binds, if named.
    Bind {
        stmt: Option<u64>,
    },
    Describe,
    Execute,
    Close,
    Sync,
    Query,
    FunctionCall,
}

impl Kind {
    /// Does a server message with `tag` end this message's reply?
    fn ends_with(self, tag: u8) -> bool {
        match self {
            Kind::Parse { .. } => tag == b'1',
            Kind::Bind { .. } => tag == b'2',
            Kind::Close => tag == b'3',
            Kind::Describe => tag == b'T' || tag == b'n',
            Kind::Execute => matches!(tag, b'C' | b'I' | b's'),
            Kind::Sync | Kind::Query | Kind::FunctionCall => tag == b'Z',
        }
    }

    fn extended(self) -> bool {
        !matches!(self, Kind::Query | Kind::FunctionCall)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The client's message went to the backend; the reply goes to the client.
    Reply(Kind),
    /// sluice's own message; its reply is swallowed, except errors, which the client must see.
    Own(Kind),
    /// sluice answered the client itself; these bytes go out in this place in the stream.
    Inject(Bytes),
}

/// What to do with one server message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Pass the message to the client (else drop it).
    pub forward: bool,
    /// Statements whose Parse failed or was skipped: the backend does not have them.
    pub unprepared: Vec<u64>,
    /// The statement whose Bind this error answers, if any.
    pub failed_bind: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Tracker {
    queue: VecDeque<Expect>,
}

impl Tracker {
    pub fn push(&mut self, e: Expect) {
        self.queue.push_back(e);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
    }

    pub fn has_inject_first(&self) -> bool {
        matches!(self.queue.front(), Some(Expect::Inject(_)))
    }

    /// Injected replies now at the front: nothing before them is owed, so they go out now.
    pub fn take_injects(&mut self, mut emit: impl FnMut(&[u8])) {
        while let Some(Expect::Inject(bytes)) = self.queue.front() {
            emit(bytes);
            self.queue.pop_front();
        }
    }

    /// Account for one server message with `tag`. Asynchronous messages (notices,
    /// notifications, parameter changes) belong to no request and always reach the client.
    pub fn on_server(&mut self, tag: u8) -> Verdict {
        let mut verdict = Verdict {
            forward: true,
            ..Verdict::default()
        };
        if matches!(tag, b'N' | b'A' | b'S') {
            return verdict;
        }
        let Some(head) = self.queue.front().cloned() else {
            return verdict;
        };
        let (kind, own) = match head {
            Expect::Reply(k) => (k, false),
            Expect::Own(k) => (k, true),
            Expect::Inject(_) => unreachable!("injects are taken before server messages"),
        };
        if tag == b'E' {
            if kind.extended() {
                self.queue.pop_front();
                if let Kind::Parse { stmt: Some(id) } = kind {
                    verdict.unprepared.push(id);
                }
                if let Kind::Bind { stmt } = kind {
                    verdict.failed_bind = stmt;
                }
                self.skip_to_sync(&mut verdict.unprepared);
            }
            return verdict; // errors always reach the client
        }
        verdict.forward = !own;
        if kind.ends_with(tag) {
            self.queue.pop_front();
        }
        verdict
    }

    /// After an error, PostgreSQL ignores everything up to the next Sync: nothing is owed for
    /// those messages, and sluice's own answers to them must not go out either.
    fn skip_to_sync(&mut self, unprepared: &mut Vec<u64>) {
        while let Some(front) = self.queue.front() {
            match front {
                Expect::Reply(Kind::Sync) | Expect::Own(Kind::Sync) => break,
                Expect::Reply(Kind::Parse { stmt: Some(id) })
                | Expect::Own(Kind::Parse { stmt: Some(id) }) => {
                    unprepared.push(*id);
                }
                _ => {}
            }
            self.queue.pop_front();
        }
    }

    /// The client ended a COPY IN: Syncs it sent after the Execute that started the copy were
    /// ignored by PostgreSQL and will never be answered.
    pub fn copy_ended(&mut self) {
        let Some(exec) = self
            .queue
            .iter()
            .rposition(|e| matches!(e, Expect::Reply(Kind::Execute)))
        else {
            return;
        };
        let mut i = exec + 1;
        while i < self.queue.len() {
            if matches!(self.queue[i], Expect::Reply(Kind::Sync)) {
                self.queue.remove(i);
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &mut Tracker, tags: &[u8]) -> Vec<bool> {
        tags.iter().map(|&tag| t.on_server(tag).forward).collect()
    }

    #[test]
    fn replies_pop_in_order() {
        let mut t = Tracker::default();
        for k in [
            Kind::Parse { stmt: None },
            Kind::Bind { stmt: None },
            Kind::Execute,
            Kind::Sync,
        ] {
            t.push(Expect::Reply(k));
        }
        assert_eq!(run(&mut t, b"12DDCZ"), vec![true; 6]);
        assert!(t.is_empty());
    }

    #[test]
    fn own_replies_are_swallowed_and_injects_go_out_in_place() {
        let mut t = Tracker::default();
        t.push(Expect::Inject(Bytes::from_static(b"PC")));
        t.push(Expect::Own(Kind::Parse { stmt: Some(7) }));
        t.push(Expect::Reply(Kind::Bind { stmt: Some(7) }));
        t.push(Expect::Inject(Bytes::from_static(b"CC")));
        t.push(Expect::Reply(Kind::Sync));
        let mut out = Vec::new();
        t.take_injects(|b| out.extend_from_slice(b));
        assert_eq!(out, b"PC");
        assert_eq!(run(&mut t, b"12"), vec![false, true]);
        t.take_injects(|b| out.extend_from_slice(b));
        assert_eq!(out, b"PCCC");
        assert_eq!(run(&mut t, b"Z"), vec![true]);
        assert!(t.is_empty());
    }

    #[test]
    fn an_error_skips_everything_owed_up_to_sync() {
        let mut t = Tracker::default();
        t.push(Expect::Own(Kind::Parse { stmt: Some(3) }));
        t.push(Expect::Reply(Kind::Bind { stmt: Some(3) }));
        t.push(Expect::Reply(Kind::Execute));
        t.push(Expect::Inject(Bytes::from_static(b"CC")));
        t.push(Expect::Reply(Kind::Parse { stmt: Some(4) }));
        t.push(Expect::Reply(Kind::Sync));
        let v = t.on_server(b'E');
        assert!(v.forward, "the client sees sluice's own Parse failing");
        assert_eq!(v.unprepared, vec![3, 4]);
        let mut out = Vec::new();
        t.take_injects(|b| out.extend_from_slice(b));
        assert!(
            out.is_empty(),
            "PostgreSQL would not have answered the skipped Close"
        );
        assert_eq!(run(&mut t, b"Z"), vec![true]);
        assert!(t.is_empty());
    }

    #[test]
    fn a_failed_bind_names_its_statement() {
        let mut t = Tracker::default();
        t.push(Expect::Reply(Kind::Bind { stmt: Some(9) }));
        t.push(Expect::Reply(Kind::Sync));
        assert_eq!(t.on_server(b'E').failed_bind, Some(9));
    }

    #[test]
    fn simple_query_errors_do_not_end_the_query() {
        let mut t = Tracker::default();
        t.push(Expect::Reply(Kind::Query));
        assert_eq!(run(&mut t, b"TDCEZ"), vec![true; 5]);
        assert!(t.is_empty());
    }

    #[test]
    fn syncs_during_copy_in_are_not_owed() {
        let mut t = Tracker::default();
        for k in [Kind::Bind { stmt: None }, Kind::Execute, Kind::Sync] {
            t.push(Expect::Reply(k));
        }
        t.copy_ended();
        t.push(Expect::Reply(Kind::Sync));
        assert_eq!(run(&mut t, b"2GCZ"), vec![true; 4]);
        assert!(t.is_empty());
    }
}
