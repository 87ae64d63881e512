//! The exact-match response cache: the same model asked the same rendered request at
//! temperature 0 gets the stored answer without a call, for `ttl_ms`. Bounded by `max_entries`
//! (the oldest entry goes first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::config::CacheConfig;
use crate::provider::{ChatRequest, ChatResponse};

/// Entries by key with their expiry (ms), and keys in insertion order for eviction.
type Entries = (HashMap<String, (i64, ChatResponse)>, VecDeque<String>);

#[derive(Debug)]
pub struct Cache {
    config: CacheConfig,
    entries: Mutex<Entries>,
}

impl Cache {
    pub fn new(config: CacheConfig) -> Cache {
        Cache {
            config,
            entries: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// The key of `request` to `model`, or `None` when the request must not be cached
    /// (cache off, or a temperature above 0).
    pub fn key(&self, model: &str, request: &ChatRequest) -> Option<String> {
        use sha2::Digest;
        if !self.config.enabled || request.temperature.unwrap_or(1.0) != 0.0 {
            return None;
        }
        let mut hasher = sha2::Sha256::new();
        hasher.update(model.as_bytes());
        hasher.update([0]);
        hasher.update(serde_json::to_vec(request).unwrap_or_default());
        Some(hex::encode(hasher.finalize()))
    }

    pub fn get(&self, key: &str, now_ms: i64) -> Option<ChatResponse> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .0
            .get(key)
            .filter(|(expires_ms, _)| *expires_ms > now_ms)
            .map(|(_, response)| response.clone())
    }

    pub fn put(&self, key: String, response: ChatResponse, now_ms: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *entries;
        let expires_ms = now_ms.saturating_add(self.config.ttl_ms as i64);
        if map.insert(key.clone(), (expires_ms, response)).is_none() {
            order.push_back(key);
        }
        while map.len() > self.config.max_entries {
            let Some(oldest) = order.pop_front() else {
                break;
            };
            map.remove(&oldest);
        }
    }
}
