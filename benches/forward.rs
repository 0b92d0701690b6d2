//! Criterion micro-benchmarks of the forward path (issue 7): the header walk, the move of
//! walked bytes from the input buffer to the output buffer, and transaction mode's renaming
//! of prepared statements. Run with `cargo bench --bench forward`; benches/README.md says
//! what each group measures and gives figures.
//!
//! Everything here drives sluice's own code (`FrameWalker`, `rewrite::Ctx`, the prepared
//! statement registry) the way `src/client/pump.rs` drives it; only the loops around the
//! calls are repeated here, without the sockets, the traffic tally and the transaction state.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use sluice::client::rewrite::{self, pass, ClientState, Ctx, Rules};
use sluice::config::Config;
use sluice::params::Params;
use sluice::prepared::{BackendStatements, Registry};
use sluice::protocol::extended::{build_bind, build_parse, build_target, command_complete, SYNC};
use sluice::protocol::frame::{header, FrameWalker, Step};
use sluice::protocol::messages::{ftag, ready_for_query, tag};

/// The pump's read size (`pump::READ_SIZE`).
const READ_SIZE: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// Wire bytes

/// Append one frame with `body`.
fn frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32((body.len() + 4) as u32);
    out.put_slice(body);
}

/// RowDescription with int4 columns of table `pgbench_accounts` (oid 16400).
fn row_description(out: &mut BytesMut, columns: &[&str]) {
    let mut body = BytesMut::new();
    body.put_u16(columns.len() as u16);
    for (i, name) in columns.iter().enumerate() {
        body.put_slice(name.as_bytes());
        body.put_u8(0);
        body.put_u32(16400); // table oid
        body.put_u16(i as u16 + 1); // attribute number
        body.put_u32(23); // int4
        body.put_i16(4); // type length
        body.put_i32(-1); // type modifier
        body.put_u16(0); // text format
    }
    frame(out, b'T', &body);
}

/// DataRow of text values.
fn data_row(out: &mut BytesMut, values: &[&str]) {
    let mut body = BytesMut::new();
    body.put_u16(values.len() as u16);
    for v in values {
        body.put_u32(v.len() as u32);
        body.put_slice(v.as_bytes());
    }
    frame(out, b'D', &body);
}

/// What PostgreSQL answers one `pgbench -S` transaction in simple-query mode:
/// `SELECT abalance FROM pgbench_accounts WHERE aid = 48213;`.
fn pgbench_select_reply() -> BytesMut {
    let mut out = BytesMut::new();
    row_description(&mut out, &["abalance"]);
    data_row(&mut out, &["-2713"]);
    command_complete(&mut out, "SELECT 1");
    ready_for_query(&mut out, b'I');
    out
}

/// A result of `rows` small rows (`SELECT aid, abalance FROM pgbench_accounts LIMIT rows`).
fn many_rows(rows: usize) -> BytesMut {
    let mut out = BytesMut::new();
    row_description(&mut out, &["aid", "abalance"]);
    for i in 0..rows {
        data_row(&mut out, &[&(100_000 + i).to_string(), "0"]);
    }
    command_complete(&mut out, &format!("SELECT {rows}"));
    ready_for_query(&mut out, b'I');
    out
}

const QUERY: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
/// One int4 parameter, as JDBC and other drivers type it.
const PARAM_TYPES: [u8; 6] = [0, 1, 0, 0, 0, 23];

fn execute(out: &mut BytesMut) {
    frame(out, ftag::EXECUTE, b"\0\0\0\0\0"); // unnamed portal, no row limit
}

/// Bind of statement `name` to the unnamed portal with one text parameter.
fn bind(out: &mut BytesMut, name: &str) {
    let rest = [0, 0, 0, 1, 0, 0, 0, 5, b'4', b'8', b'2', b'1', b'3', 0, 0];
    build_bind(out, "", name, &rest);
}

/// The batch a driver sends the first time it runs a named statement: Parse, Bind, Describe
/// (statement), Execute, Sync.
fn parse_batch(name: &str) -> BytesMut {
    let mut out = BytesMut::new();
    build_parse(&mut out, name, QUERY, &PARAM_TYPES);
    bind(&mut out, name);
    build_target(&mut out, ftag::DESCRIBE, b'S', name);
    execute(&mut out);
    out.extend_from_slice(&SYNC);
    out
}

/// The batch it sends on every later run: Bind, Describe (statement), Execute, Sync.
fn reuse_batch(name: &str) -> BytesMut {
    let mut out = BytesMut::new();
    bind(&mut out, name);
    build_target(&mut out, ftag::DESCRIBE, b'S', name);
    execute(&mut out);
    out.extend_from_slice(&SYNC);
    out
}

/// The backend's reply tags to a batch (ParseComplete when it saw a Parse), then
/// BindComplete, ParameterDescription, RowDescription, DataRow, CommandComplete,
/// ReadyForQuery.
fn reply_tags(backend_parses: bool) -> &'static [u8] {
    if backend_parses {
        b"12tTDCZ"
    } else {
        b"2tTDCZ"
    }
}

/// The tags of the frames in `buf`.
fn tags(buf: &[u8]) -> String {
    let mut at = 0;
    let mut s = String::new();
    while let Some((t, len)) = header(&buf[at..]) {
        s.push(t as char);
        at += len;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Header walk

/// `walk_server`'s inspect closure in transaction mode: ReadyForQuery and ParameterStatus
/// always, errors and ParseComplete/CloseComplete for the tracker.
#[inline]
fn server_inspect(t: u8) -> bool {
    t == tag::READY_FOR_QUERY
        || t == tag::PARAMETER_STATUS
        || matches!(t, tag::ERROR_RESPONSE | b'1' | b'3')
}

/// Walk `buf` as `walk_server` does, the bytes arriving `read` at a time (the walk resumes
/// where the last one stopped: whole frames wait for their tail, streaming frames go on in
/// pieces). Returns the number of frames and the bytes walked.
#[inline]
fn walk_in_reads(buf: &[u8], read: usize) -> (usize, usize) {
    let mut walker = FrameWalker::new(0);
    let (mut start, mut end, mut frames) = (0, 0, 0);
    while end < buf.len() {
        end = (end + read).min(buf.len());
        loop {
            match walker.step(&buf[start..end], server_inspect) {
                Step::NeedMore => break,
                Step::Whole { len, .. } | Step::Start { len, .. } => {
                    frames += 1;
                    start += len;
                }
                Step::Continue { len } => start += len,
                Step::Malformed { .. } => unreachable!("the bench's frames are well formed"),
            }
        }
    }
    (frames, start)
}

/// Only `frame::header`, frame after frame: the floor under the walk.
#[inline]
fn headers_only(buf: &[u8]) -> (usize, usize) {
    let (mut at, mut frames) = (0, 0);
    while let Some((_, len)) = header(&buf[at..]) {
        frames += 1;
        at += len;
    }
    (frames, at)
}

fn header_walk(c: &mut Criterion) {
    let reply = pgbench_select_reply();
    let rows = many_rows(1000);
    assert_eq!(walk_in_reads(&reply, READ_SIZE), (4, reply.len()));
    assert_eq!(walk_in_reads(&rows, READ_SIZE), (1003, rows.len()));
    assert_eq!(walk_in_reads(&rows, rows.len()), (1003, rows.len()));
    assert_eq!(headers_only(&rows), (1003, rows.len()));

    let mut g = c.benchmark_group("header_walk");
    g.throughput(Throughput::Bytes(reply.len() as u64));
    g.bench_function("pgbench_select_reply", |b| {
        b.iter(|| walk_in_reads(black_box(&reply), READ_SIZE))
    });
    g.throughput(Throughput::Bytes(rows.len() as u64));
    g.bench_function("1000_datarows/one_read", |b| {
        b.iter(|| walk_in_reads(black_box(&rows), rows.len()))
    });
    g.bench_function("1000_datarows/16KiB_reads", |b| {
        b.iter(|| walk_in_reads(black_box(&rows), READ_SIZE))
    });
    g.bench_function("1000_datarows/header_only", |b| {
        b.iter(|| headers_only(black_box(&rows)))
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Frame copy

/// The pump's `reserve`: room for the next read, reclaiming the buffer's front in place once
/// every split taken from it is gone.
#[inline]
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
}

fn frame_copy(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_copy");
    for (label, n) in [("100B", 100), ("8KiB", 8 * 1024), ("64KiB", 64 * 1024)] {
        let data = vec![0x5au8; n];
        g.throughput(Throughput::Bytes(n as u64));
        // What the pump does: no byte moves, the output takes over the input's front. Then
        // the bytes go back to the input for the next iteration (the empty remnant is
        // dropped, as `drained` drops a written-out buffer).
        g.bench_function(format!("split_unsplit/{label}"), |b| {
            let mut input = BytesMut::from(&data[..]);
            let mut out = BytesMut::new();
            b.iter(|| {
                pass(&mut input, &mut out, n);
                black_box(&out);
                input = std::mem::take(&mut out);
            })
        });
        // Copying instead, into an empty output (as `drained` leaves it): allocate, copy,
        // free.
        g.bench_function(format!("extend_from_slice/{label}"), |b| {
            let input = BytesMut::from(&data[..]);
            b.iter(|| {
                let mut out = BytesMut::new();
                out.extend_from_slice(&black_box(&input)[..n]);
                black_box(out)
            })
        });
        // Copying into an output with room already: the copy alone.
        g.bench_function(format!("extend_from_slice_reserved/{label}"), |b| {
            let input = BytesMut::from(&data[..]);
            let mut out = BytesMut::with_capacity(n);
            b.iter(|| {
                out.clear();
                out.extend_from_slice(&black_box(&input)[..n]);
                black_box(&out);
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Name rewriting

/// One client's transaction-mode state and the bound backend's, as the session holds them.
struct Bound {
    walker: FrameWalker,
    client: ClientState,
    backend: BackendStatements,
    client_params: std::sync::Arc<Params>,
    server_params: Params,
    written: BytesMut,
}

impl Bound {
    fn new(backend: BackendStatements) -> Bound {
        Bound {
            walker: FrameWalker::new(64 << 20),
            client: ClientState::default(),
            backend,
            client_params: std::sync::Arc::default(),
            server_params: Params::new(),
            written: BytesMut::new(),
        }
    }

    /// The transaction-mode branch of `walk_client` (src/client/pump.rs): walk the client's
    /// input, hand each frame to `Ctx::on_frame`, move what is forwarded to `out` and drop
    /// what was rewritten or answered; sluice's own answers go to `to_client`.
    fn walk_client(
        &mut self,
        rules: &Rules<'_>,
        input: &mut BytesMut,
        out: &mut BytesMut,
        to_client: &mut BytesMut,
    ) {
        let mut n = 0;
        loop {
            let inspect = |t: u8| t == ftag::TERMINATE || rewrite::needs_whole(t);
            match self.walker.step(&input[n..], inspect) {
                Step::NeedMore => break,
                Step::Whole { tag, len } | Step::Start { tag, len } => {
                    let mut ctx = Ctx {
                        client: &mut self.client,
                        backend: &mut self.backend,
                        rules,
                        client_params: &mut self.client_params,
                        server_params: &mut self.server_params,
                    };
                    ctx.route(tag, len, input, &mut n, out, &mut self.written);
                }
                Step::Continue { len } => n += len,
                Step::Malformed { .. } => unreachable!("the bench's frames are well formed"),
            }
        }
        pass(input, out, n);
        let tracker = &mut self.client.tracker;
        tracker.take_injects(|b| to_client.extend_from_slice(b));
    }

    /// The backend's replies as `walk_server` accounts them in the tracker; returns how many
    /// reach the client.
    fn replies(&mut self, reply_tags: &[u8], to_client: &mut BytesMut) -> usize {
        let tracker = &mut self.client.tracker;
        let mut forwarded = 0;
        for &t in reply_tags {
            if tracker.has_inject_first() {
                tracker.take_injects(|b| to_client.extend_from_slice(b));
            }
            forwarded += tracker.on_server(t).forward as usize;
        }
        forwarded
    }

    /// One round trip: the batch out, its replies back. Returns (tags sent to the backend,
    /// bytes sluice answered itself, replies forwarded) for the checks.
    fn round_trip(&mut self, rules: &Rules<'_>, batch: &[u8], reply_tags: &[u8]) -> RoundTrip {
        let mut input = BytesMut::from(batch);
        let (mut out, mut to_client) = (BytesMut::new(), BytesMut::new());
        self.walk_client(rules, &mut input, &mut out, &mut to_client);
        let forwarded = self.replies(reply_tags, &mut to_client);
        assert!(self.client.tracker.is_empty(), "every reply accounted for");
        RoundTrip {
            sent: tags(&out),
            answered: tags(&to_client),
            forwarded,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct RoundTrip {
    sent: String,
    answered: String,
    forwarded: usize,
}

fn round_trip(sent: &str, answered: &str, forwarded: usize) -> RoundTrip {
    RoundTrip {
        sent: sent.into(),
        answered: answered.into(),
        forwarded,
    }
}

/// The session's buffers, reused from one iteration to the next as the pump reuses them.
#[derive(Default)]
struct Wire {
    input: BytesMut,
    out: BytesMut,
    to_client: BytesMut,
}

impl Wire {
    /// The batch arrives (copied in, standing in for the socket read).
    #[inline]
    fn read(&mut self, batch: &[u8]) {
        reserve(&mut self.input);
        self.input.extend_from_slice(batch);
    }

    /// Both outputs were written out: `drained` lets go of them.
    #[inline]
    fn written(&mut self) {
        black_box((&self.out, &self.to_client));
        self.out = BytesMut::new();
        self.to_client = BytesMut::new();
    }
}

fn name_rewriting(c: &mut Criterion) {
    let config = Config::parse("[databases.bench]\n", Path::new("sluice.toml"), Some(""))
        .expect("the bench's config parses");
    let extra: Vec<String> = Vec::new();
    let name = "s1";
    let first = parse_batch(name);
    let again = reuse_batch(name);

    // Warm state: the first round trip prepares the statement; later ones reuse it.
    let registry = Registry::new(config.limits.prepared_statement_memory);
    let rules = Rules::new(&registry, &config, &extra);
    let mut warm = Bound::new(BackendStatements::default());
    let prepared = warm.round_trip(&rules, &first, reply_tags(true));
    assert_eq!(prepared, round_trip("PBDES", "", 7));
    assert_eq!(
        warm.round_trip(&rules, &again, reply_tags(false)),
        round_trip("BDES", "", 6)
    );
    // The shared statement as this backend knows it, for the "new client" case.
    let stmt_id = warm.client.statements[name.as_bytes()].id;
    let backend_with_stmt = || {
        let mut b = BackendStatements::default();
        b.insert(stmt_id, config.pool.max_prepared_statements);
        b
    };
    let mut new_client = Bound::new(backend_with_stmt());
    assert_eq!(
        new_client.round_trip(&rules, &first, reply_tags(false)),
        round_trip("BDES", "1", 6),
        "a Parse the backend already has is answered by sluice"
    );

    let mut g = c.benchmark_group("name_rewriting");

    // Baseline: the same batch in session mode, walked and moved without a look inside.
    g.bench_function("session_mode_walk_only", |b| {
        let mut walker = FrameWalker::new(64 << 20);
        let mut wire = Wire::default();
        b.iter(|| {
            wire.read(&again);
            let mut n = 0;
            loop {
                match walker.step(&wire.input[n..], |t| t == ftag::TERMINATE) {
                    Step::Start { len, .. } | Step::Whole { len, .. } => n += len,
                    Step::Continue { len } => n += len,
                    _ => break,
                }
            }
            pass(&mut wire.input, &mut wire.out, n);
            wire.written();
        })
    });

    // Steady state: Bind/Describe/Execute/Sync of a statement the client and the backend
    // both know: two renames, and the replies accounted.
    g.bench_function("steady_bind_describe_execute_sync", |b| {
        let mut wire = Wire::default();
        b.iter(|| {
            wire.read(&again);
            warm.walk_client(&rules, &mut wire.input, &mut wire.out, &mut wire.to_client);
            black_box(warm.replies(reply_tags(false), &mut wire.to_client));
            wire.written();
        })
    });

    // A client's first Parse of a statement the backend already has (another client
    // prepared it): sluice answers the Parse, renames the rest. Each iteration is a new
    // client, made outside the timing in batches of 100 (small batches keep them in cache,
    // as a client's state is when its batch arrives).
    g.bench_function("new_client_parse_bind_describe_execute_sync", |b| {
        let mut wire = Wire::default();
        b.iter_batched_ref(
            || Bound::new(backend_with_stmt()),
            |bound| {
                wire.read(&first);
                bound.walk_client(&rules, &mut wire.input, &mut wire.out, &mut wire.to_client);
                black_box(bound.replies(reply_tags(false), &mut wire.to_client));
                wire.written();
            },
            BatchSize::NumIterations(100),
        )
    });

    // First Parse anywhere: a new entry in an empty registry, prepared on the backend. Each
    // iteration has a new registry, client and backend (made outside the timing).
    g.bench_function("first_parse_bind_describe_execute_sync", |b| {
        let mut wire = Wire::default();
        b.iter_batched_ref(
            || {
                let registry = Registry::new(config.limits.prepared_statement_memory);
                (registry, Bound::new(BackendStatements::default()))
            },
            |(registry, bound)| {
                let rules = Rules::new(registry, &config, &extra);
                wire.read(&first);
                bound.walk_client(&rules, &mut wire.input, &mut wire.out, &mut wire.to_client);
                black_box(bound.replies(reply_tags(true), &mut wire.to_client));
                wire.written();
            },
            BatchSize::NumIterations(100),
        )
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = forward;
    config = config();
    targets = header_walk, frame_copy, name_rewriting
}
criterion_main!(forward);
