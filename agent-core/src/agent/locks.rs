//! One async mutex per session in use: two invocations of one session never interleave.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// One async mutex per session in use, so two invocations of one session never interleave.
/// Entries disappear when no invocation holds or waits for them.
#[derive(Default)]
pub(crate) struct SessionLocks {
    map: Mutex<HashMap<Arc<str>, Weak<tokio::sync::Mutex<()>>>>,
}

pub(crate) struct SessionLockGuard<'a> {
    locks: &'a SessionLocks,
    key: Arc<str>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for SessionLockGuard<'_> {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let mutex = tokio::sync::OwnedMutexGuard::mutex(&guard).clone();
        drop(guard);
        // Acquirers upgrade the weak entry under the map lock, so a strong count of one (ours)
        // checked under that lock means nobody holds or waits for this session.
        let mut map = self
            .locks
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if Arc::strong_count(&mutex) == 1 {
            map.remove(&self.key);
        }
    }
}

impl SessionLocks {
    pub(crate) async fn acquire(
        &self,
        key: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Option<SessionLockGuard<'_>> {
        let key: Arc<str> = key.into();
        let mutex = {
            let mut map = self
                .map
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.get(&key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.clone(), Arc::downgrade(&m));
                    m
                }
            }
        };
        let lock = mutex.lock_owned();
        let guard = match deadline {
            Some(d) => tokio::time::timeout_at(d, lock).await.ok()?,
            None => lock.await,
        };
        Some(SessionLockGuard {
            locks: self,
            key,
            guard: Some(guard),
        })
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn session_locks_serialise_and_clean_up() {
        let locks = SessionLocks::default();
        let first = locks.acquire("s", None).await.expect("free");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(
            locks.acquire("s", Some(deadline)).await.is_none(),
            "busy session waits are bounded"
        );
        let other = locks
            .acquire("t", None)
            .await
            .expect("other sessions are independent");
        assert_eq!(locks.len(), 2);
        drop(first);
        drop(other);
        assert_eq!(locks.len(), 0, "entries go when nobody holds them");
        let again = locks
            .acquire(
                "s",
                Some(tokio::time::Instant::now() + Duration::from_millis(50)),
            )
            .await;
        assert!(again.is_some());
    }
}
