//! A cache of SCRAM salted passwords for logging in to backends. PBKDF2 costs milliseconds of
//! CPU; it runs once per (password, salt, iterations) on the blocking pool, never on the async
//! runtime, and every later backend login reuses the result. Concurrent first connects wait
//! for the one derivation instead of each running their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::auth::scram;

type Key = ([u8; 32], Vec<u8>, u32);

/// Iteration counts above this are refused: a hostile server could otherwise make sluice burn
/// CPU on every login.
pub const MAX_ITERATIONS: u32 = 1_000_000;

#[derive(Default)]
pub struct SaltedPasswords {
    /// Keyed by a digest of the password, so the cache itself holds no plain text.
    cache: Mutex<HashMap<Key, Arc<OnceCell<[u8; 32]>>>>,
}

impl SaltedPasswords {
    /// None when the server asks for more than `MAX_ITERATIONS`.
    pub async fn get(&self, password: &str, salt: &[u8], iterations: u32) -> Option<[u8; 32]> {
        if iterations > MAX_ITERATIONS {
            return None;
        }
        let key: Key = (
            Sha256::digest(password.as_bytes()).into(),
            salt.to_vec(),
            iterations,
        );
        let cell = self.cache.lock().unwrap().entry(key).or_default().clone();
        let salted = cell
            .get_or_init(|| async {
                let (pw, s) = (password.to_string(), salt.to_vec());
                tokio::task::spawn_blocking(move || scram::salted_password(&pw, &s, iterations))
                    .await
                    .expect("PBKDF2 task panicked")
            })
            .await;
        Some(*salted)
    }
}
