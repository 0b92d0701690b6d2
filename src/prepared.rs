//! Named prepared statements in transaction mode. Clients name statements as they like; sluice
//! keeps one shared registry keyed by (query text, parameter types), gives each entry its own
//! server-side name (`sluice_<id>`), and prepares it on a backend the first time that backend
//! needs it. Clients preparing the same query share one server-side statement.
//!
//! Memory is bounded: the registry counts the bytes it holds, and past its cap it first drops
//! statements no client uses, then refuses new ones. Each backend keeps at most
//! `pool.max_prepared_statements`, closing the least recently used first.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;

use crate::protocol::extended::build_parse;

/// `sluice_<id>`, without an allocation: "sluice_" and at most 20 digits.
#[derive(Clone, Copy)]
pub struct ServerName {
    buf: [u8; 27],
    len: u8,
}

impl ServerName {
    fn new(id: u64) -> ServerName {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut n = id;
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let digits = &digits[start..];
        let mut buf = [0u8; 27];
        buf[..7].copy_from_slice(b"sluice_");
        buf[7..7 + digits.len()].copy_from_slice(digits);
        ServerName {
            buf,
            len: (7 + digits.len()) as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len as usize]).expect("ASCII")
    }
}

impl std::fmt::Display for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One shared statement.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    /// The text as the client sent it, in its `client_encoding`.
    pub query: Vec<u8>,
    pub param_types: Vec<u8>,
    /// The `client_encoding` the text is in, where that matters: text with bytes past ASCII
    /// means different characters in different encodings, so clients in different
    /// encodings never share it. (ASCII reads the same in every client encoding.)
    pub encoding: Option<Box<str>>,
    /// Set when a backend reported its plan stale ("cached plan must not change result
    /// type"): clients move to a fresh statement at their next use.
    retired: AtomicBool,
}

impl Statement {
    /// The statement's name on backends, `sluice_<id>`: written into every Bind and Describe
    /// of a named statement, so it is formatted on the stack.
    pub fn server_name(id: u64) -> ServerName {
        ServerName::new(id)
    }

    /// Append the Parse that prepares this statement on a backend.
    pub fn write_parse(&self, out: &mut BytesMut) {
        build_parse(
            out,
            Self::server_name(self.id).as_str(),
            &self.query,
            &self.param_types,
        );
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    fn size(&self) -> usize {
        self.query.len() + self.param_types.len() + std::mem::size_of::<Statement>() + 64
    }

    fn key(&self) -> Key {
        (
            self.query.clone(),
            self.param_types.clone(),
            self.encoding.clone(),
        )
    }
}

/// Text, parameter types, and the encoding where the text needs one.
type Key = (Vec<u8>, Vec<u8>, Option<Box<str>>);

/// The registry's memory cap was reached by statements clients still use.
#[derive(Debug)]
pub struct RegistryFull {
    pub limit: usize,
}

pub struct Registry {
    map: Mutex<HashMap<Key, Arc<Statement>>>,
    next_id: AtomicU64,
    bytes: AtomicUsize,
    max_bytes: AtomicUsize,
}

impl Registry {
    pub fn new(max_bytes: usize) -> Registry {
        Registry {
            map: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            bytes: AtomicUsize::new(0),
            max_bytes: AtomicUsize::new(max_bytes),
        }
    }

    /// The shared statement for this query and parameter types, made if new. `encoding` is
    /// the client's `client_encoding`, which tells statements apart only when the text is
    /// not all ASCII.
    pub fn statement(
        &self,
        query: &[u8],
        param_types: &[u8],
        encoding: &str,
    ) -> Result<Arc<Statement>, RegistryFull> {
        let encoding = (!query.is_ascii()).then(|| encoding.into());
        let mut map = self.map.lock().unwrap();
        let key = (query.to_vec(), param_types.to_vec(), encoding);
        if let Some(s) = map.get(&key) {
            return Ok(s.clone());
        }
        let stmt = Arc::new(Statement {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            query: key.0.clone(),
            param_types: key.1.clone(),
            encoding: key.2.clone(),
            retired: AtomicBool::new(false),
        });
        let size = stmt.size();
        let max_bytes = self.max_bytes.load(Ordering::Relaxed);
        if self.bytes.load(Ordering::Relaxed) + size > max_bytes {
            self.drop_unused(&mut map);
            if self.bytes.load(Ordering::Relaxed) + size > max_bytes {
                return Err(RegistryFull { limit: max_bytes });
            }
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        map.insert(key, stmt.clone());
        Ok(stmt)
    }

    /// Forget statements only the registry holds.
    fn drop_unused(&self, map: &mut HashMap<Key, Arc<Statement>>) {
        map.retain(|_, s| {
            let used = Arc::strong_count(s) > 1;
            if !used {
                self.bytes.fetch_sub(s.size(), Ordering::Relaxed);
            }
            used
        });
    }

    /// Stop handing out `stmt`: its plan went stale on a backend after DDL.
    pub fn retire(&self, stmt: &Statement) {
        stmt.retired.store(true, Ordering::Relaxed);
        let mut map = self.map.lock().unwrap();
        let key = stmt.key();
        if map.get(&key).is_some_and(|s| s.id == stmt.id) {
            if let Some(s) = map.remove(&key) {
                self.bytes.fetch_sub(s.size(), Ordering::Relaxed);
            }
        }
    }

    /// A reloaded memory cap: applies to statements made from now on.
    pub fn set_max_bytes(&self, max_bytes: usize) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The statements one backend has prepared, least recently used first out.
#[derive(Debug, Default)]
pub struct BackendStatements {
    last_used: HashMap<u64, u64, BuildHasherDefault<IdHasher>>,
    tick: u64,
    /// Statements used at or after this tick belong to the batch in flight; they are never
    /// closed under it.
    batch_start: u64,
}

impl BackendStatements {
    /// Has this backend prepared `id`? Marks it used.
    pub fn touch(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.last_used.get_mut(&id) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Record that `id` is being prepared; return statements to close to stay within `cap`.
    pub fn insert(&mut self, id: u64, cap: usize) -> Vec<u64> {
        self.tick += 1;
        self.last_used.insert(id, self.tick);
        let mut evicted = Vec::new();
        while self.last_used.len() > cap {
            let oldest = self
                .last_used
                .iter()
                .filter(|(_, &t)| t < self.batch_start)
                .min_by_key(|(_, &t)| t)
                .map(|(&id, _)| id);
            let Some(oldest) = oldest else { break };
            self.last_used.remove(&oldest);
            evicted.push(oldest);
        }
        evicted
    }

    pub fn remove(&mut self, id: u64) {
        self.last_used.remove(&id);
    }

    /// The backend lost every prepared statement (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.last_used.clear();
    }

    /// A Sync went out: a new batch starts after it.
    pub fn new_batch(&mut self) {
        self.batch_start = self.tick + 1;
    }

    pub fn len(&self) -> usize {
        self.last_used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_used.is_empty()
    }
}

/// Hashes a statement id, which sluice numbers itself (no client chooses it, so no client can
/// aim collisions at it): one multiply, where SipHash took about 80 instructions a lookup.
#[derive(Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        // A multiply spreads the id over the high bits (the table's tag bits); folding them
        // down makes the low bits (its bucket index) depend on every bit of the id too.
        let x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 29);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_formatted_on_the_stack_as_before() {
        for id in [0, 7, 10, 4096, u64::MAX] {
            assert_eq!(Statement::server_name(id).as_str(), format!("sluice_{id}"));
            assert_eq!(
                Statement::server_name(id).to_string(),
                format!("sluice_{id}")
            );
        }
    }

    #[test]
    fn same_query_and_types_share_one_statement() {
        let r = Registry::new(1 << 20);
        let a = r
            .statement(b"select $1", &[0, 1, 0, 0, 0, 23], "UTF8")
            .unwrap();
        let b = r
            .statement(b"select $1", &[0, 1, 0, 0, 0, 23], "UTF8")
            .unwrap();
        let c = r
            .statement(b"select $1", &[0, 1, 0, 0, 0, 25], "UTF8")
            .unwrap();
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(r.len(), 2);
        assert!(r.bytes() > 0);
    }

    #[test]
    fn memory_cap_drops_unused_then_refuses() {
        let r = Registry::new(700);
        let held = r
            .statement("x".repeat(200).as_bytes(), &[], "UTF8")
            .unwrap();
        drop(
            r.statement("y".repeat(200).as_bytes(), &[], "UTF8")
                .unwrap(),
        );
        // Over the cap: the unused "y" goes, the held "x" stays.
        let z = r
            .statement("z".repeat(200).as_bytes(), &[], "UTF8")
            .unwrap();
        assert_eq!(r.len(), 2);
        let err = r
            .statement("w".repeat(200).as_bytes(), &[], "UTF8")
            .unwrap_err();
        assert_eq!(err.limit, 700);
        drop((held, z));
    }

    #[test]
    fn text_past_ascii_is_shared_only_within_one_client_encoding() {
        let r = Registry::new(1 << 20);
        let utf8 = r.statement(b"select 'caf\xc3\xa9'", &[], "UTF8").unwrap();
        let latin1 = r.statement(b"select 'caf\xc3\xa9'", &[], "LATIN1").unwrap();
        assert_ne!(utf8.id, latin1.id, "the same bytes spell other characters");
        assert_eq!(latin1.encoding.as_deref(), Some("LATIN1"));
        let again = r.statement(b"select 'caf\xc3\xa9'", &[], "UTF8").unwrap();
        assert_eq!(again.id, utf8.id);
        // ASCII reads the same in every encoding: one statement.
        let a = r.statement(b"select 1", &[], "UTF8").unwrap();
        let b = r.statement(b"select 1", &[], "LATIN1").unwrap();
        assert_eq!((a.id, a.encoding.as_deref()), (b.id, None));
        // Retiring finds the statement under its own key.
        r.retire(&latin1);
        let fresh = r.statement(b"select 'caf\xc3\xa9'", &[], "LATIN1").unwrap();
        assert_ne!(fresh.id, latin1.id);
        assert_eq!(
            r.statement(b"select 'caf\xc3\xa9'", &[], "UTF8")
                .unwrap()
                .id,
            utf8.id
        );
    }

    #[test]
    fn retired_statements_are_replaced_by_fresh_ones() {
        let r = Registry::new(1 << 20);
        let a = r.statement(b"select 1", &[], "UTF8").unwrap();
        r.retire(&a);
        assert!(a.is_retired());
        let b = r.statement(b"select 1", &[], "UTF8").unwrap();
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn backend_closes_least_recently_used_outside_the_batch() {
        let mut b = BackendStatements::default();
        assert!(b.insert(1, 2).is_empty());
        assert!(b.insert(2, 2).is_empty());
        assert!(b.touch(1));
        b.new_batch();
        assert_eq!(b.insert(3, 2), vec![2]);
        assert!(!b.touch(2));
        // Everything else is in this batch: nothing may be closed, so the cap bends.
        assert!(b.touch(1));
        assert!(b.insert(4, 2).is_empty());
        assert_eq!(b.len(), 3);
    }
}
