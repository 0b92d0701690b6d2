//! A cache of SCRAM salted passwords for logging in to backends. PBKDF2 costs milliseconds of
//! CPU; it runs once per (password, salt, iterations) on the blocking pool, never on the async
//! runtime, and every later backend login reuses the result.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::auth::scram;

type Key = ([u8; 32], Vec<u8>, u32);

#[derive(Default)]
pub struct SaltedPasswords {
    /// Keyed by a digest of the password, so the cache itself holds no plain text.
    cache: Mutex<HashMap<Key, [u8; 32]>>,
}

impl SaltedPasswords {
    pub async fn get(&self, password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
        let key: Key = (
            Sha256::digest(password.as_bytes()).into(),
            salt.to_vec(),
            iterations,
        );
        if let Some(hit) = self.cache.lock().unwrap().get(&key) {
            return *hit;
        }
        let (pw, s) = (password.to_string(), salt.to_vec());
        let salted =
            tokio::task::spawn_blocking(move || scram::salted_password(&pw, &s, iterations))
                .await
                .expect("PBKDF2 task panicked");
        self.cache.lock().unwrap().insert(key, salted);
        salted
    }
}
