//! Cancel routing. Each client gets its own BackendKeyData from sluice; a CancelRequest carrying
//! it is forwarded to the backend serving that client at that moment, and to no other. A
//! client that is between transactions has nothing to cancel, so the request is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::protocol::startup::cancel_request;
use crate::server::BackendKey;

/// Where a cancel for one client goes right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    pub addr: SocketAddr,
    pub key: BackendKey,
}

/// One client's cancel key and the backend it is bound to, if any.
pub struct CancelSlot {
    pub pid: u32,
    pub secret: u32,
    bound: Mutex<Option<CancelTarget>>,
}

impl CancelSlot {
    pub fn bind(&self, target: CancelTarget) {
        *self.bound.lock().unwrap() = Some(target);
    }

    pub fn unbind(&self) {
        *self.bound.lock().unwrap() = None;
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<u32, Arc<CancelSlot>>>,
    next_pid: AtomicU32,
}

/// Removes a client's key from the registry when its session ends.
pub struct Registered<'a> {
    registry: &'a CancelRegistry,
    pub slot: Arc<CancelSlot>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.clients.lock().unwrap().remove(&self.slot.pid);
    }
}

impl CancelRegistry {
    /// Give a new client a unique key.
    pub fn register(&self) -> Registered<'_> {
        let mut clients = self.clients.lock().unwrap();
        let pid = loop {
            // Positive like a real PID, and unique among live clients.
            let pid = self.next_pid.fetch_add(1, Ordering::Relaxed) % (i32::MAX as u32) + 1;
            if !clients.contains_key(&pid) {
                break pid;
            }
        };
        let slot = Arc::new(CancelSlot {
            pid,
            secret: rand::random(),
            bound: Mutex::new(None),
        });
        clients.insert(pid, slot.clone());
        Registered {
            registry: self,
            slot,
        }
    }

    /// The backend a cancel with this key should reach, if the key is right and the client
    /// is bound.
    pub fn target(&self, pid: u32, secret: u32) -> Option<CancelTarget> {
        let slot = self.clients.lock().unwrap().get(&pid).cloned()?;
        if slot.secret != secret {
            return None;
        }
        let bound = *slot.bound.lock().unwrap();
        bound
    }
}

/// Send a CancelRequest to a backend on a fresh connection, as PostgreSQL expects.
pub async fn send_cancel(target: CancelTarget) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(target.addr).await?;
    stream
        .write_all(&cancel_request(target.key.pid, target.key.secret))
        .await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_reaches_only_a_bound_client_with_the_right_secret() {
        let reg = CancelRegistry::default();
        let a = reg.register();
        let b = reg.register();
        assert_ne!(a.slot.pid, b.slot.pid);
        let target = CancelTarget {
            addr: "127.0.0.1:5432".parse().unwrap(),
            key: BackendKey { pid: 99, secret: 1 },
        };
        assert_eq!(reg.target(a.slot.pid, a.slot.secret), None);
        a.slot.bind(target);
        assert_eq!(reg.target(a.slot.pid, a.slot.secret), Some(target));
        assert_eq!(reg.target(a.slot.pid, a.slot.secret.wrapping_add(1)), None);
        assert_eq!(reg.target(b.slot.pid, b.slot.secret), None);
        a.slot.unbind();
        assert_eq!(reg.target(a.slot.pid, a.slot.secret), None);
        let pid = a.slot.pid;
        drop(a);
        assert!(reg.clients.lock().unwrap().get(&pid).is_none());
    }
}
