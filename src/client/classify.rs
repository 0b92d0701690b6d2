//! A look at a statement's first keywords, enough to tell whether it leaves session state on
//! a backend that transaction pooling would hand to the next client, or manages prepared
//! statements. Not a SQL parser: it reads past whitespace and comments, then a few words.
//!
//! It reads bytes, not `str`: the text is in the client's `client_encoding`, which need not be
//! UTF-8 (LATIN1, WIN1252, SJIS ...). No multibyte character of an encoding PostgreSQL accepts
//! from clients has an ASCII quote, dollar sign, whitespace or comment mark among its bytes,
//! so the scan means the same in all of them; the one exception is JOHAB, whose second bytes
//! include `;` (such a character splits the text early here).

use crate::params;
use crate::protocol::frame::printable;

/// What a statement means for pooling.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect<'a> {
    /// Nothing that outlives the transaction (or state sluice tracks by itself).
    None,
    /// Session state a shared backend would carry to the next client; the text names it.
    SessionState(String),
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate(&'a [u8]),
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `RESET ALL`.
    ResetAll,
}

/// Classify one statement's text. `extra` lists the tracked parameters beyond the built-in
/// ones.
pub fn classify<'a>(sql: &'a [u8], extra: &[String]) -> Effect<'a> {
    let mut words = Words::new(sql);
    let Some(first) = words.next() else {
        return Effect::None;
    };
    // Compared in place: uppercasing into a String would allocate for every statement.
    let is = |keyword: &str| first.eq_ignore_ascii_case(keyword.as_bytes());
    let effect = if is("SET") {
        set(&mut words, extra)
    } else if is("RESET") {
        reset(&mut words)
    } else if is("LISTEN") {
        state("LISTEN")
    } else if is("PREPARE") {
        match words.next() {
            Some(w) if w.eq_ignore_ascii_case(b"TRANSACTION") => Effect::None,
            _ => state("PREPARE"),
        }
    } else if is("DECLARE") && contains_ci(sql, "with hold") {
        state("DECLARE ... WITH HOLD")
    } else if is("CREATE") {
        create(&mut words)
    } else if is("DEALLOCATE") {
        deallocate(&mut words)
    } else if is("DISCARD") {
        match words.next() {
            Some(w) if w.eq_ignore_ascii_case(b"ALL") => Effect::DiscardAll,
            _ => Effect::None,
        }
    } else {
        Effect::None
    };
    if effect == Effect::None && contains_ci(sql, "advisory_lock") {
        // pg_advisory_lock and friends hold until session end; the _xact_ ones do not and
        // are spelled "advisory_xact_lock".
        return state("pg_advisory_lock");
    }
    effect
}

fn state(what: &str) -> Effect<'static> {
    Effect::SessionState(what.to_string())
}

fn set<'a>(words: &mut Words<'_>, extra: &[String]) -> Effect<'a> {
    let Some(w) = words.next() else {
        return Effect::None;
    };
    let is = |keyword: &str| w.eq_ignore_ascii_case(keyword.as_bytes());
    let name = if is("LOCAL") || is("TRANSACTION") || is("CONSTRAINTS") {
        return Effect::None;
    } else if is("ROLE") {
        return state("SET ROLE");
    } else if is("SESSION") {
        match words.next() {
            Some(n) if n.eq_ignore_ascii_case(b"AUTHORIZATION") => {
                return state("SET SESSION AUTHORIZATION")
            }
            Some(n) if n.eq_ignore_ascii_case(b"CHARACTERISTICS") => {
                return state("SET SESSION CHARACTERISTICS")
            }
            Some(n) => n,
            None => return Effect::None,
        }
    } else if is("TIME") {
        b"TimeZone"
    } else {
        w
    };
    let name = unquote(name);
    // Parameters PostgreSQL reports back are followed through ParameterStatus; others
    // would stay behind on the backend. (A name that is not UTF-8 is no parameter sluice
    // follows.)
    match std::str::from_utf8(name) {
        Ok(name) if params::is_reported(name) && params::is_tracked(name, extra) => Effect::None,
        _ => Effect::SessionState(format!("SET {}", printable(name))),
    }
}

/// A word without the double quotes around it, if it has them.
fn unquote(w: &[u8]) -> &[u8] {
    let w = w.strip_prefix(b"\"").unwrap_or(w);
    w.strip_suffix(b"\"").unwrap_or(w)
}

fn reset<'a>(words: &mut Words<'_>) -> Effect<'a> {
    match words.next() {
        Some(w) if w.eq_ignore_ascii_case(b"ALL") => Effect::ResetAll,
        _ => Effect::None,
    }
}

fn create<'a>(words: &mut Words<'_>) -> Effect<'a> {
    let mut w = words.next();
    if w.is_some_and(|w| w.eq_ignore_ascii_case(b"LOCAL") || w.eq_ignore_ascii_case(b"GLOBAL")) {
        w = words.next();
    }
    match w {
        Some(w) if w.eq_ignore_ascii_case(b"TEMP") || w.eq_ignore_ascii_case(b"TEMPORARY") => {
            state("CREATE TEMP")
        }
        _ => Effect::None,
    }
}

fn deallocate<'a>(words: &mut Words<'a>) -> Effect<'a> {
    let mut w = words.next();
    if w.is_some_and(|w| w.eq_ignore_ascii_case(b"PREPARE")) {
        w = words.next();
    }
    match w {
        Some(w) if w.eq_ignore_ascii_case(b"ALL") => Effect::DeallocateAll,
        Some(w) if words.next().is_none() => Effect::Deallocate(unquote(w)),
        _ => Effect::None,
    }
}

/// ASCII case-insensitive substring search for a needle that ends with a letter. Only where
/// the haystack has that letter (`| 0x20` folds only letters onto the lowercase letter) is a
/// window compared; a statement without it is passed over 16 bytes at a time.
fn contains_ci(h: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    let last = n[n.len() - 1].to_ascii_lowercase();
    debug_assert!(last.is_ascii_lowercase());
    let mut from = n.len() - 1;
    while let Some(i) = find_byte(h, from, 0x20, &[last]) {
        if h[i + 1 - n.len()..=i].eq_ignore_ascii_case(n) {
            return true;
        }
        from = i + 1;
    }
    false
}

/// The first index at or after `from` whose byte, with `fold` or-ed into it, is one of `set`
/// (`fold` 0x20 makes a lowercase letter match either case). On x86_64, 16 bytes at a time
/// with SSE2 (part of the baseline, so always there): a compare per byte of `set`, one mask,
/// and a last load that overlaps the block before it instead of a byte-by-byte tail.
#[inline]
fn find_byte(b: &[u8], from: usize, fold: u8, set: &[u8]) -> Option<usize> {
    if from >= b.len() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if b.len() >= 16 {
        use std::arch::x86_64::*;
        // The mask of the bytes of `b[at..at + 16]` that match.
        let hits = |at: usize| {
            debug_assert!(at + 16 <= b.len());
            // SAFETY: SSE2 is in the x86_64 baseline; the load reads b[at..at + 16], inside `b`.
            unsafe {
                let v = _mm_or_si128(
                    _mm_loadu_si128(b.as_ptr().add(at).cast()),
                    _mm_set1_epi8(fold as i8),
                );
                let mut any = _mm_setzero_si128();
                for &c in set {
                    any = _mm_or_si128(any, _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8)));
                }
                _mm_movemask_epi8(any) as u32
            }
        };
        let mut i = from;
        while i + 16 <= b.len() {
            let m = hits(i);
            if m != 0 {
                return Some(i + m.trailing_zeros() as usize);
            }
            i += 16;
        }
        if i == b.len() {
            return None;
        }
        // The last 16 bytes, less those before `i` that were already looked at.
        let last = b.len() - 16;
        let m = hits(last) >> (i - last);
        return (m != 0).then(|| i + m.trailing_zeros() as usize);
    }
    b[from..]
        .iter()
        .position(|&c| set.contains(&(c | fold)))
        .map(|j| from + j)
}

/// The bytes a word is made of: letters, digits, `_`, `.`, `$`, and every byte past ASCII (a
/// word never ends inside a character). A table: one load per byte.
static WORD: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c >= 0x80 || c == b'_' || c == b'.' || c == b'$';
        b += 1;
    }
    t
};

/// Words of a statement: identifiers, keywords and quoted identifiers, skipping whitespace,
/// comments and punctuation. A trailing semicolon ends the statement.
struct Words<'a> {
    rest: &'a [u8],
}

impl<'a> Words<'a> {
    fn new(sql: &'a [u8]) -> Self {
        Words { rest: sql }
    }

    /// Past whitespace (PostgreSQL's: space, tab, newline, carriage return, form feed) and
    /// comments.
    fn skip_space(&mut self) {
        loop {
            let trimmed = self.rest.trim_ascii_start();
            if let Some(after) = trimmed.strip_prefix(b"--") {
                self.rest = after_first(after, b"\n");
            } else if let Some(after) = trimmed.strip_prefix(b"/*") {
                self.rest = after_first(after, b"*/");
            } else {
                self.rest = trimmed;
                return;
            }
        }
    }
}

/// What follows the first `pat` in `s`; empty when it does not occur.
fn after_first<'a>(s: &'a [u8], pat: &[u8]) -> &'a [u8] {
    find(s, pat).map_or(&[], |i| &s[i + pat.len()..])
}

/// The offset of the first `pat` in `s`.
fn find(s: &[u8], pat: &[u8]) -> Option<usize> {
    match *pat {
        [one] => memchr::memchr(one, s),
        _ => memchr::memmem::find(s, pat),
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        self.skip_space();
        let s = self.rest;
        if let Some(inner) = s.strip_prefix(b"\"") {
            let end = find(inner, b"\"").map_or(s.len(), |i| i + 2);
            self.rest = &s[end..];
            return Some(&s[..end]);
        }
        let end = s.iter().position(|&b| !WORD[b as usize]).unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        self.rest = &s[end..];
        Some(&s[..end])
    }
}

/// The session state any statement of a (possibly multi-statement) Query leaves, if any.
pub fn session_state(sql: &[u8], extra: &[String]) -> Option<String> {
    statements(sql).find_map(|s| match classify(s, extra) {
        Effect::SessionState(what) => Some(what),
        _ => None,
    })
}

/// May this statement run with other clients' queries queued behind it on the same backend
/// (`pool.pipeline_depth`)? Only if it is one statement that can leave neither a transaction
/// open nor anything changed for the query after it: a SELECT (not SELECT INTO), VALUES,
/// TABLE, INSERT, UPDATE or DELETE that calls no set_config, touches no pg_settings and that
/// `classify` finds harmless. Text this scanner could misread is refused outright: nested
/// comments, backslashes (E'' strings, standard_conforming_strings off) and U& escapes.
/// Anything else waits for a backend of its own.
pub fn rideable(sql: &[u8], extra: &[String]) -> bool {
    let unicode_escape = sql.windows(2).any(|w| w[0] | 0x20 == b'u' && w[1] == b'&');
    if sql.contains(&b'\\') || unicode_escape || nests_comments(sql) {
        return false;
    }
    let Some(first) = Words::new(sql).next() else {
        return false;
    };
    let is = |keyword: &str| first.eq_ignore_ascii_case(keyword.as_bytes());
    let kind = (is("SELECT") && !contains_ci(sql, "into"))
        || is("VALUES")
        || is("TABLE")
        || is("INSERT")
        || is("UPDATE")
        || is("DELETE");
    kind && single_statement(sql)
        && !contains_ci(sql, "set_config")
        && !contains_ci(sql, "pg_settings")
        && classify(sql, extra) == Effect::None
}

/// Does a block comment open inside another? PostgreSQL nests them; this scanner does not.
/// (Looked at without regard to quotes: a false alarm only keeps a query from riding.)
fn nests_comments(sql: &[u8]) -> bool {
    let mut rest = sql;
    while let Some(open) = find(rest, b"/*") {
        rest = &rest[open + 2..];
        match (find(rest, b"/*"), find(rest, b"*/")) {
            (Some(inner), Some(close)) if inner < close => return true,
            (Some(_), None) => return true,
            (_, Some(close)) => rest = &rest[close + 2..],
            (None, None) => return false,
        }
    }
    false
}

/// Is this Query text a single statement (at most one trailing semicolon)?
pub fn single_statement(sql: &[u8]) -> bool {
    statements(sql)
        .filter(|s| !s.trim_ascii().is_empty())
        .count()
        <= 1
}

/// The statements of a Query, split at semicolons outside quotes, dollar quotes and comments.
pub fn statements(sql: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = sql;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = statement_end(rest);
        let (stmt, tail) = rest.split_at(end);
        rest = tail.strip_prefix(b";").unwrap_or(tail);
        Some(stmt)
    })
}

/// The bytes `statement_end` stops at.
const SPECIAL: &[u8] = b";'\"-/$";

/// Byte offset of the first top-level semicolon (or the end).
fn statement_end(b: &[u8]) -> usize {
    let mut i = 0;
    while i < b.len() {
        // Most bytes mean nothing here: pass them in a tight loop.
        match find_byte(b, i, 0, SPECIAL) {
            Some(j) => i = j,
            None => return b.len(),
        }
        let skip_to = |from: usize, pat: &[u8]| {
            find(&b[from..], pat).map_or(b.len(), |j| from + j + pat.len())
        };
        i = match b[i] {
            b';' => return i,
            b'\'' => skip_to(i + 1, b"'"),
            b'"' => skip_to(i + 1, b"\""),
            b'-' if b.get(i + 1) == Some(&b'-') => skip_to(i + 2, b"\n"),
            b'/' if b.get(i + 1) == Some(&b'*') => skip_to(i + 2, b"*/"),
            b'$' => match dollar_tag(&b[i..]) {
                Some(tag) => skip_to(i + tag.len(), tag),
                None => i + 1,
            },
            _ => i + 1,
        };
    }
    b.len()
}

/// A dollar-quote opener ("$$" or "$name$") at the start of `s`. The name's bytes are an
/// identifier's: letters, digits, `_` and every byte past ASCII.
fn dollar_tag(s: &[u8]) -> Option<&[u8]> {
    let tag_byte = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let end = s[1..].iter().position(|&c| !tag_byte(c))? + 1;
    (s.get(end) == Some(&b'$')).then(|| &s[..=end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(sql: &str) -> Effect<'_> {
        classify(sql.as_bytes(), &[])
    }

    #[test]
    fn only_single_statements_that_end_idle_and_unchanged_ride() {
        let ride = |sql: &str| rideable(sql.as_bytes(), &[]);
        for yes in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
            " /* c */ select 1",
            "values (1), (2)",
            "TABLE t",
            "insert into t values (1) returning id",
            "UPDATE t SET a = 1",
            "delete from t where a = ';'",
            "SELECT 'BEGIN; COMMIT'",
            "/* app=web */ SELECT 1 /* route=/x */",
        ] {
            assert!(ride(yes), "{yes}");
        }
        for no in [
            "",
            "BEGIN",
            "start transaction",
            "SELECT 1; BEGIN",
            "SELECT 1; SELECT 2",
            "select * into new_table from t",
            "SELECT set_config('application_name', 'x', false)",
            "select pg_advisory_lock(1)",
            "SET search_path = x",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "COPY t TO STDOUT",
            "CALL p()",
            "DO $$ BEGIN PERFORM 1; END $$",
            "LISTEN ch",
            "EXPLAIN ANALYZE SELECT 1",
            "PREPARE p AS SELECT 1",
            "COMMIT",
            // Text the scanner could misread: PostgreSQL nests comments, and backslashes and
            // U& escapes can hide a quote or a name.
            "/* /* */ SELECT */ BEGIN",
            "/* a /* b */ SELECT 1",
            "SELECT E'\\'';BEGIN;SELECT ''",
            "select 'a\\' ; begin",
            "SELECT U&\"set\\005fconfig\"('a', 'b', false)",
            "SELECT u&\"set!005fconfig\" UESCAPE '!' ('a', 'b', false)",
            "UPDATE pg_settings SET setting = 'x' WHERE name = 'search_path'",
        ] {
            assert!(!ride(no), "{no}");
        }
    }

    #[test]
    fn session_state_is_named() {
        assert_eq!(c("LISTEN ch"), state("LISTEN"));
        assert_eq!(
            c("  /* x */ -- y\n prepare p as select 1"),
            state("PREPARE")
        );
        assert_eq!(
            c("DECLARE c CURSOR WITH HOLD FOR select 1"),
            state("DECLARE ... WITH HOLD")
        );
        assert_eq!(c("create temporary table t (a int)"), state("CREATE TEMP"));
        assert_eq!(c("CREATE LOCAL TEMP TABLE t (a int)"), state("CREATE TEMP"));
        assert_eq!(c("select pg_advisory_lock(1)"), state("pg_advisory_lock"));
        assert_eq!(c("SELECT PG_Advisory_Lock(1)"), state("pg_advisory_lock"));
        assert_eq!(c("set \"café\" = 1"), state("SET café"));
        assert_eq!(c("SET café.x = 1"), state("SET café.x"));
        assert_eq!(c("SET search_path = x"), state("SET search_path"));
        assert_eq!(c("SET SESSION work_mem TO '4MB'"), state("SET work_mem"));
        assert_eq!(c("set role admin"), state("SET ROLE"));
    }

    #[test]
    fn transaction_scoped_and_tracked_statements_are_fine() {
        assert_eq!(c("SET LOCAL work_mem = '1MB'"), Effect::None);
        assert_eq!(
            c("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            Effect::None
        );
        assert_eq!(c("SET TimeZone = 'UTC'"), Effect::None);
        assert_eq!(c("set time zone 'UTC'"), Effect::None);
        assert_eq!(c("SET application_name TO 'x'"), Effect::None);
        assert_eq!(c("select pg_advisory_xact_lock(1)"), Effect::None);
        assert_eq!(c("CREATE TABLE t (a int)"), Effect::None);
        assert_eq!(c("PREPARE TRANSACTION 'x'"), Effect::None);
        assert_eq!(c("DECLARE c CURSOR FOR select 1"), Effect::None);
        assert_eq!(c(""), Effect::None);
    }

    #[test]
    fn every_statement_of_a_query_is_looked_at() {
        let sql = "BEGIN; DECLARE hc CURSOR WITH HOLD FOR select 1; COMMIT";
        assert_eq!(
            session_state(sql.as_bytes(), &[]).as_deref(),
            Some("DECLARE ... WITH HOLD")
        );
        assert_eq!(
            session_state(b"select ';'; select $x$;listen$x$", &[]),
            None
        );
        assert_eq!(
            session_state(b"select 1 -- ;\n; LISTEN a", &[]).as_deref(),
            Some("LISTEN")
        );
        let parts: Vec<&[u8]> = statements(b"a; 'b;c'; \"d;\"; $$e;$$; /* f; */ g").collect();
        let want: [&[u8]; 5] = [b"a", b" 'b;c'", b" \"d;\"", b" $$e;$$", b" /* f; */ g"];
        assert_eq!(parts, want);
    }

    #[test]
    fn text_that_is_not_utf8_is_read_all_the_same() {
        // LATIN1's é (0xE9) and WIN1252's € (0x80): single bytes that are not UTF-8.
        assert_eq!(
            classify(b"SET search_path TO \"caf\xe9\", public", &[]),
            state("SET search_path")
        );
        assert_eq!(classify(b"set \"caf\xe9\" = 1", &[]), state("SET caf\\xe9"));
        assert_eq!(
            session_state(b"select '\x80;'; -- \xe9\nLISTEN ch", &[]).as_deref(),
            Some("LISTEN")
        );
        assert_eq!(
            classify(b"DEALLOCATE \"s\xe9\"", &[]),
            Effect::Deallocate(b"s\xe9")
        );
        assert!(single_statement(b"select $\xe9$ ; $\xe9$"));
        assert!(rideable(b"SELECT 'caf\xe9' FROM t", &[]));
        assert!(!rideable(b"SELECT 'caf\xe9'; BEGIN", &[]));
    }

    #[test]
    fn prepared_statement_management() {
        assert_eq!(c("DEALLOCATE s1"), Effect::Deallocate(b"s1"));
        assert_eq!(c("deallocate prepare \"S1\";"), Effect::Deallocate(b"S1"));
        assert_eq!(c("DEALLOCATE ALL"), Effect::DeallocateAll);
        assert_eq!(c("discard all"), Effect::DiscardAll);
        assert_eq!(c("RESET ALL"), Effect::ResetAll);
        assert!(single_statement(b"DEALLOCATE x;"));
        assert!(!single_statement(b"DEALLOCATE x; select 1"));
    }

    #[test]
    fn substring_and_byte_search_agree_with_a_plain_scan_at_every_offset() {
        let needle = "advisory_lock";
        // The needle at every position around the 16-byte blocks, in both cases, and
        // near-misses that share its last letter.
        for pad in 0..40 {
            for word in ["advisory_lock", "ADVISORY_LOCK", "Advisory_Lock"] {
                let sql = format!("{}{word} x", "k".repeat(pad));
                assert!(contains_ci(sql.as_bytes(), needle), "{sql}");
            }
            let miss = format!("{}advisory_lok advisoryXlock k", "k".repeat(pad));
            assert!(!contains_ci(miss.as_bytes(), needle), "{miss}");
        }
        assert!(
            !contains_ci(b"lock", needle),
            "haystack shorter than the needle"
        );
        assert!(!contains_ci(b"", needle));
        assert!(contains_ci(b"declare c cursor WITH HOLD for", "with hold"));

        let specials = |c: u8| b";'\"-/$".contains(&c);
        // From every offset of `b`, the search agrees with a plain scan.
        let agrees_from_every_offset = |b: &[u8], what: &str| {
            for from in 0..=b.len() {
                let want = b[from..]
                    .iter()
                    .position(|&c| specials(c))
                    .map(|j| from + j);
                assert_eq!(find_byte(b, from, 0, SPECIAL), want, "{what} from {from}");
            }
        };
        for len in 0..50 {
            for (at, &mark) in (0..=len).zip(b";'\"-/$x".iter().cycle()) {
                let mut b = vec![b'x'; len];
                if at < len {
                    b[at] = mark;
                }
                let want = b.iter().position(|&c| specials(c));
                assert_eq!(find_byte(&b, 0, 0, SPECIAL), want, "len {len} at {at}");
                let folded = b.iter().position(|&c| c | 0x20 == b'k');
                let upper: Vec<u8> = b
                    .iter()
                    .map(|&c| if c == b'x' { c } else { b'K' })
                    .collect();
                let want_upper = upper.iter().position(|&c| c == b'K');
                assert_eq!(find_byte(&b, 0, 0x20, b"k"), folded, "len {len} at {at}");
                assert_eq!(
                    find_byte(&upper, 0, 0x20, b"k"),
                    want_upper,
                    "len {len} at {at}"
                );
                agrees_from_every_offset(&b, &format!("len {len} at {at}"));
            }
        }
        // Two hits, searched from every offset: one before `from` must not count, which the
        // overlapping last block has to mask out.
        for len in 0..40 {
            for p in 0..len {
                for q in p + 1..len {
                    let mut b = vec![b'x'; len];
                    (b[p], b[q]) = (b'$', b';');
                    agrees_from_every_offset(&b, &format!("len {len} hits {p} {q}"));
                }
            }
        }
        let sql = "select 'a;b', \"c;d\" -- e;f\n; g";
        assert_eq!(statement_end(sql.as_bytes()), sql.find("\n;").unwrap() + 1);
    }
}
