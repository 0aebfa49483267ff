//! What collection remembers between fetches: the ids already collected
//! per remote mailbox ([`CollectionState`]).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

/// Errors of the state back end.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The back end failed.
    #[error("collection state unavailable: {0}")]
    Backend(String),
}

/// Remembers what was already collected, per source.
///
/// A source is a remote mailbox ([`RemoteAccount::source_key`](crate::collect::RemoteAccount::source_key)); DomainPOP
/// also keeps the Message-IDs it delivered under `<source>#message-id`.
/// Implementations must make [`CollectionState::mark_seen`] durable before
/// returning; the in-tree one is [`MemoryCollectionState`].
#[async_trait]
pub trait CollectionState: Send + Sync {
    /// Every id recorded for `source`.
    async fn seen(&self, source: &str) -> Result<HashSet<String>, StateError>;

    /// Records `id` for `source`.
    async fn mark_seen(&self, source: &str, id: &str) -> Result<(), StateError>;

    /// Forgets the ids of `source` not in `keep` (messages no longer on the
    /// server), so the set stays as small as the remote mailbox.
    async fn retain(&self, source: &str, keep: &HashSet<String>) -> Result<(), StateError>;

    /// True when `id` is recorded for `source`. The default reads the
    /// whole set; stores should answer with one lookup.
    async fn contains(&self, source: &str, id: &str) -> Result<bool, StateError> {
        Ok(self.seen(source).await?.contains(id))
    }

    /// Records `id` for `source` and forgets the oldest ids of `source`
    /// beyond `max` (0 = no bound): DomainPOP's Message-ID sets grow with
    /// every message and are bounded this way. The default ignores the
    /// bound.
    async fn mark_seen_bounded(&self, source: &str, id: &str, max: u64) -> Result<(), StateError> {
        let _ = max;
        self.mark_seen(source, id).await
    }

    /// The ids of `source` recorded before `cutoff` (Unix time), for
    /// "delete from the server N days after collecting". The default
    /// (a state that keeps no times) returns none, so nothing is deleted.
    async fn seen_before(&self, source: &str, cutoff: i64) -> Result<HashSet<String>, StateError> {
        let _ = (source, cutoff);
        Ok(HashSet::new())
    }
}

/// A [`CollectionState`] in memory (tests, and a model for stores).
#[derive(Debug, Default)]
pub struct MemoryCollectionState {
    sets: Mutex<HashMap<String, HashSet<String>>>,
}

impl MemoryCollectionState {
    /// An empty state.
    pub fn new() -> MemoryCollectionState {
        MemoryCollectionState::default()
    }
}

#[async_trait]
impl CollectionState for MemoryCollectionState {
    async fn seen(&self, source: &str) -> Result<HashSet<String>, StateError> {
        let sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        Ok(sets.get(source).cloned().unwrap_or_default())
    }

    async fn mark_seen(&self, source: &str, id: &str) -> Result<(), StateError> {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        sets.entry(source.to_string())
            .or_default()
            .insert(id.to_string());
        Ok(())
    }

    async fn retain(&self, source: &str, keep: &HashSet<String>) -> Result<(), StateError> {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = sets.get_mut(source) {
            set.retain(|id| keep.contains(id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_state() {
        let s = MemoryCollectionState::new();
        s.mark_seen("a", "1").await.unwrap();
        s.mark_seen("a", "2").await.unwrap();
        s.retain("a", &HashSet::from(["2".to_string()]))
            .await
            .unwrap();
        assert_eq!(s.seen("a").await.unwrap(), HashSet::from(["2".to_string()]));
        assert!(s.seen("b").await.unwrap().is_empty());
        s.mark_seen_bounded("b", "x", 1).await.unwrap();
        assert!(s.contains("b", "x").await.unwrap());
    }
}
