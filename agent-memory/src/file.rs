//! A local file store with Strands' layout: the embedded default for a single machine.
//!
//! Writes are atomic (a temporary file, then a link or rename). A message file is created only
//! if it does not exist (a hard link fails on an existing name), so two writers of one session
//! cannot overwrite each other's messages; the agent document is updated under an exclusive
//! file lock with a version check.

use std::path::{Path, PathBuf};

use agent_core::message::Message;
use agent_core::session::{
    SessionKey, SessionState, SessionStore, StateVersion, StoreError, StoredSession,
};
use async_trait::async_trait;

use crate::strands::{self, Layout};

/// Sessions under a directory, in Strands' layout.
#[derive(Debug, Clone)]
pub struct FileSessionStore {
    root: PathBuf,
}

impl FileSessionStore {
    /// A store under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::backend(e.to_string(), e)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(backend)?
}

/// Writes `bytes` to a fresh temporary file next to `target` and returns its path.
fn temp_file(target: &Path, bytes: &[u8]) -> Result<PathBuf, StoreError> {
    use std::io::Write as _;
    let dir = target
        .parent()
        .ok_or_else(|| StoreError::backend_message("path without a parent"))?;
    std::fs::create_dir_all(dir).map_err(backend)?;
    let temp = dir.join(format!(
        ".tmp-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let mut file = std::fs::File::create_new(&temp).map_err(backend)?;
    file.write_all(bytes).map_err(backend)?;
    file.sync_all().map_err(backend)?;
    Ok(temp)
}

/// Temporary files live for milliseconds (written, then linked or renamed); one older than
/// this was left by a writer that was killed, and is removed.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes `entry` if it is a temporary file a killed writer left behind.
fn remove_if_stale_temp(entry: &std::fs::DirEntry) {
    if !entry.file_name().to_string_lossy().starts_with(".tmp-") {
        return;
    }
    let stale = entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_TEMP);
    if stale {
        // Best effort: another process may have removed it first.
        let _ = std::fs::remove_file(entry.path());
    }
}

#[async_trait]
impl SessionStore for FileSessionStore {
    async fn load(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        let layout = Layout::for_files(key);
        let agent_path = self.path(&layout.agent());
        let messages_dir = self.path(&layout.messages_dir());
        let key = key.clone();
        blocking(move || {
            let agent = match std::fs::read(&agent_path) {
                Ok(bytes) => Some(strands::parse_agent(&key, &bytes)?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(backend(e)),
            };
            let mut indexed = Vec::new();
            match std::fs::read_dir(&messages_dir) {
                Ok(entries) => {
                    for entry in entries {
                        let entry = entry.map_err(backend)?;
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if let Some(i) = strands::message_index(&name) {
                            indexed.push((i, entry.path()));
                        } else {
                            remove_if_stale_temp(&entry);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(backend(e)),
            }
            if agent.is_none() && indexed.is_empty() {
                return Ok(None);
            }
            indexed.sort_by_key(|(i, _)| *i);
            strands::check_contiguous(&key, &indexed.iter().map(|(i, _)| *i).collect::<Vec<_>>())?;
            let mut messages = Vec::with_capacity(indexed.len());
            for (_, path) in &indexed {
                let bytes = std::fs::read(path).map_err(backend)?;
                messages.push(strands::parse_message(
                    &key,
                    &path.to_string_lossy(),
                    &bytes,
                )?);
            }
            let (state, version) = agent.unwrap_or_default();
            Ok(Some(StoredSession {
                messages,
                state,
                state_version: StateVersion(version.map(|v| v.to_string())),
            }))
        })
        .await
    }

    async fn append(
        &self,
        key: &SessionKey,
        expected_len: usize,
        messages: &[Message],
    ) -> Result<(), StoreError> {
        let layout = Layout::for_files(key);
        let mut writes = Vec::with_capacity(messages.len() + 1);
        if expected_len == 0 {
            writes.push((
                self.path(&layout.session()),
                strands::session_doc(key.session_id()),
                true,
            ));
        }
        for (i, m) in messages.iter().enumerate() {
            writes.push((
                self.path(&layout.message(expected_len + i)),
                strands::message_doc(expected_len + i, m),
                false,
            ));
        }
        let key = key.clone();
        blocking(move || {
            for (target, bytes, may_exist) in writes {
                let temp = temp_file(&target, &bytes)?;
                // A hard link never replaces an existing file: the loser of a race gets an error.
                let linked = std::fs::hard_link(&temp, &target);
                let _ = std::fs::remove_file(&temp);
                match linked {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if !may_exist {
                            return Err(strands::conflict(
                                &key,
                                format!("{} already exists", target.display()),
                            ));
                        }
                    }
                    Err(e) => return Err(backend(e)),
                }
            }
            Ok(())
        })
        .await
    }

    async fn save_state(
        &self,
        key: &SessionKey,
        state: &SessionState,
        expected: &StateVersion,
    ) -> Result<StateVersion, StoreError> {
        let layout = Layout::for_files(key);
        let agent_path = self.path(&layout.agent());
        let key = key.clone();
        let state = state.clone();
        let expected = expected.clone();
        blocking(move || {
            let dir = agent_path
                .parent()
                .ok_or_else(|| StoreError::backend_message("path without a parent"))?;
            std::fs::create_dir_all(dir).map_err(backend)?;
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(".agent.lock"))
                .map_err(backend)?;
            // Released when `lock` is dropped, also if this process dies.
            lock.lock().map_err(backend)?;
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    remove_if_stale_temp(&entry);
                }
            }
            let previous = match std::fs::read(&agent_path) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(backend(e)),
            };
            let current = match &previous {
                Some(bytes) => strands::parse_agent(&key, bytes)?.1.map(|v| v.to_string()),
                None => None,
            };
            if current != expected.0 {
                return Err(strands::conflict(
                    &key,
                    format!(
                        "expected state version {:?}, found {:?}",
                        expected.0, current
                    ),
                ));
            }
            let next = current.and_then(|c| c.parse::<u64>().ok()).unwrap_or(0) + 1;
            let temp = temp_file(
                &agent_path,
                &strands::agent_doc(previous.as_deref(), key.agent_id(), &state, Some(next)),
            )?;
            std::fs::rename(&temp, &agent_path).map_err(backend)?;
            Ok(StateVersion(Some(next.to_string())))
        })
        .await
    }
}
