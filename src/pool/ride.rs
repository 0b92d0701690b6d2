//! Pipelining waiting queries (`pool.pipeline_depth`). When a backend comes free for the
//! client at the head of the queue and the clients queued right behind it each wait with one
//! single-statement autocommit request (a Query, or an unnamed Parse-Bind-Execute-Sync), up
//! to `pipeline_depth - 1` of them ride along: the client given the backend (the driver)
//! sends its own request and theirs in one write, and PostgreSQL, which runs them one after
//! another and ends each with its own ReadyForQuery, answers them in order. The driver hands
//! each rider its replies through a channel. One write and one wake-up of the backend serve
//! several transactions.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::admin::clients::ClientEntry;
use crate::cancel::CancelSlot;

/// Pieces of a long result a rider may have waiting before the driver waits for it.
const REPLY_BACKLOG: usize = 4;

/// What a waiting client offers to ride on another's backend.
pub struct RideRequest {
    /// Its request, whole: one Query, or Parse to Sync (see `client/pipeline.rs`).
    pub query: Bytes,
    /// The version of the client's parameters: it rides only with a driver whose backend
    /// already has the same.
    pub params: u64,
    /// Bound by the driver while the rider's query is the one running, so that the client's
    /// CancelRequest reaches it.
    pub cancel: Arc<CancelSlot>,
    /// The client's registry entry, shown bound to the driver's backend while it rides.
    pub client: Arc<ClientEntry>,
}

/// How a client offers to ride: asked, under the pool lock, only when the client is about to
/// wait in a pool that pipelines. None from it (or no offer): the client waits for a backend
/// of its own.
pub type Offer<'a> = Option<&'a (dyn Fn() -> Option<RideRequest> + Sync)>;

/// A rider as the driver sees it: its request and where its replies go. The first piece of
/// the replies (for a short result, all of them) goes by a oneshot; a longer result opens a
/// bounded channel for the rest, which holds the driver back while the rider's client is
/// slow to take them.
pub struct Rider {
    pub request: RideRequest,
    first: Option<oneshot::Sender<Reply>>,
    rest: Option<mpsc::Sender<Reply>>,
}

/// What the rider receives: its replies in order, through `next`.
pub struct Ride {
    first: Option<oneshot::Receiver<Reply>>,
    rest: Option<mpsc::Receiver<Reply>>,
}

/// A piece of a rider's replies, cut at message boundaries.
pub struct Reply {
    pub bytes: BytesMut,
    /// Set on the last piece: the status byte of the rider's ReadyForQuery.
    pub ready: Option<u8>,
    /// ParameterStatus messages in this piece (name, value): the rider follows them as a
    /// bound client does.
    pub params: Vec<(String, String)>,
    /// With a first piece that is not the last: where the rest comes.
    more: Option<mpsc::Receiver<Reply>>,
}

impl Rider {
    pub(super) fn new(request: RideRequest) -> (Rider, Ride) {
        let (tx, rx) = oneshot::channel();
        let rider = Rider {
            request,
            first: Some(tx),
            rest: None,
        };
        let ride = Ride {
            first: Some(rx),
            rest: None,
        };
        (rider, ride)
    }

    /// Hand the rider the next piece of its replies (`ready` on the last). Waits while the
    /// rider is `REPLY_BACKLOG` pieces behind; a rider that has left is skipped.
    pub async fn send(
        &mut self,
        bytes: BytesMut,
        ready: Option<u8>,
        params: Vec<(String, String)>,
    ) {
        let mut reply = Reply {
            bytes,
            ready,
            params,
            more: None,
        };
        if let Some(first) = self.first.take() {
            if ready.is_none() {
                let (tx, rx) = mpsc::channel(REPLY_BACKLOG);
                reply.more = Some(rx);
                self.rest = Some(tx);
            }
            let _ = first.send(reply);
        } else if let Some(rest) = &self.rest {
            let _ = rest.send(reply).await;
        }
    }
}

impl Ride {
    /// The next piece of the replies; None when the driver lost the backend before the last.
    pub async fn next(&mut self) -> Option<Reply> {
        if let Some(first) = self.first.take() {
            let mut reply = first.await.ok()?;
            self.rest = reply.more.take();
            return Some(reply);
        }
        self.rest.as_mut()?.recv().await
    }
}
