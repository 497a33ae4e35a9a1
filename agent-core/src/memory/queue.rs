//! The extraction queue: finished invocations wait here to be mined, batched per actor, bounded
//! in total, with their outcomes reported as [`MemoryEvent`]s and counted in
//! [`ExtractionStats`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};

use super::{Conversation, MemoryRecord, MemoryStore, extract::extract_memories_from};
use crate::message::Message;
use crate::model::Model;

/// Extractions (invocations waiting to be mined, or being mined) allowed at once before new ones
/// are skipped (and counted).
pub const DEFAULT_MAX_PENDING_EXTRACTIONS: usize = 16;

/// The most invocations of one actor mined in one model call.
pub const MAX_EXTRACTION_BATCH: usize = 4;

/// What became of a finished invocation's extraction. Sent to every
/// [`MemoryConfig::subscribe`](super::MemoryConfig::subscribe) receiver; a receiver that falls
/// more than 256 events behind misses the oldest.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MemoryEvent {
    /// One model call mined these sessions' invocations.
    Extracted {
        /// Whose memory.
        actor_id: String,
        /// The sessions of the invocations mined together, one entry per invocation.
        sessions: Vec<String>,
        /// Records written: new ones, and records a new text extended.
        written: Vec<MemoryRecord>,
        /// Candidates refused, with the reason.
        refused: Vec<(String, &'static str)>,
        /// How long the extraction took.
        elapsed: Duration,
    },
    /// The extraction failed, timed out or ended early. Records it wrote before that stay;
    /// nothing more is written for these invocations.
    Failed {
        /// Whose memory.
        actor_id: String,
        /// The sessions of the invocations.
        sessions: Vec<String>,
        /// The error and its causes.
        error: String,
    },
    /// The queue was full: this invocation was not mined.
    Skipped {
        /// Whose memory.
        actor_id: String,
        /// The session of the invocation.
        session_id: String,
    },
}

/// Counts of extraction outcomes since the config was made (or since
/// [`MemoryConfig::max_pending_extractions`](super::MemoryConfig::max_pending_extractions)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExtractionStats {
    /// Model calls that mined invocations and ended (with records or without).
    pub extractions: u64,
    /// Invocations mined by those calls; above `extractions` when invocations were batched.
    pub invocations: u64,
    /// Records written.
    pub written: u64,
    /// Candidates refused.
    pub refused: u64,
    /// Extractions that failed or timed out.
    pub failed: u64,
    /// Invocations not mined because the queue was full.
    pub skipped: u64,
}

/// One finished invocation to mine.
pub(crate) struct Job {
    pub(crate) session_id: String,
    pub(crate) first_message: usize,
    pub(crate) messages: Vec<Message>,
}

/// The queue, shared by a config's clones.
#[derive(Debug)]
pub(crate) struct Queue {
    /// Invocations waiting or being mined: what `settled` waits for.
    pending: AtomicUsize,
    max: usize,
    idle: Notify,
    /// Actors (with the store and model their jobs go to) that have an extraction task, and the
    /// invocations waiting for it.
    actors: Mutex<HashMap<ActorKey, Vec<Job>>>,
    events: broadcast::Sender<MemoryEvent>,
    extractions: AtomicU64,
    invocations: AtomicU64,
    written: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

/// An actor's queue: jobs are batched only with jobs for the same store and model (clones of a
/// config share the queue, and may have changed their store).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ActorKey {
    actor: String,
    store: usize,
    model: usize,
}

/// What an extraction task needs besides its jobs.
pub(crate) struct Miner {
    pub(crate) model: Arc<dyn Model>,
    pub(crate) store: Arc<dyn MemoryStore>,
    pub(crate) timeout: Duration,
}

impl Queue {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            pending: AtomicUsize::new(0),
            max,
            idle: Notify::new(),
            actors: Mutex::new(HashMap::new()),
            events: broadcast::channel(256).0,
            extractions: AtomicU64::new(0),
            invocations: AtomicU64::new(0),
            written: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ActorKey, Vec<Job>>> {
        // Every critical section leaves the map consistent.
        self.actors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<MemoryEvent> {
        self.events.subscribe()
    }

    pub(crate) fn stats(&self) -> ExtractionStats {
        ExtractionStats {
            extractions: self.extractions.load(Ordering::SeqCst),
            invocations: self.invocations.load(Ordering::SeqCst),
            written: self.written.load(Ordering::SeqCst),
            refused: self.refused.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            skipped: self.skipped.load(Ordering::SeqCst),
        }
    }

    pub(crate) async fn settled(&self) {
        loop {
            let idle = self.idle.notified();
            if self.pending() == 0 {
                return;
            }
            idle.await;
        }
    }

    fn done(&self, n: usize) {
        self.pending.fetch_sub(n, Ordering::SeqCst);
        self.idle.notify_waiters();
    }

    /// Queues a finished invocation: with the actor's running extraction if there is one (it
    /// takes it next, batched with others), else in a new task. Skipped when the queue is full.
    pub(crate) fn submit(self: &Arc<Self>, miner: Miner, actor_id: &str, job: Job) {
        let mut actors = self.lock();
        let taken = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            drop(actors);
            self.skipped.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(
                actor = actor_id,
                "memory extraction skipped: {} invocations already wait to be mined",
                self.max
            );
            let _ = self.events.send(MemoryEvent::Skipped {
                actor_id: actor_id.to_owned(),
                session_id: job.session_id,
            });
            return;
        }
        let key = ActorKey {
            actor: actor_id.to_owned(),
            store: Arc::as_ptr(&miner.store).cast::<()>() as usize,
            model: Arc::as_ptr(&miner.model).cast::<()>() as usize,
        };
        if let Some(waiting) = actors.get_mut(&key) {
            waiting.push(job);
            return;
        }
        actors.insert(key.clone(), Vec::new());
        drop(actors);
        let runner = Runner {
            queue: self.clone(),
            key,
            // The job is counted in `pending` already: it is in hand from now on.
            in_hand: vec![job.session_id.clone()],
            finished: false,
        };
        tokio::spawn(runner.run(miner, vec![job]));
    }
}

/// The one extraction task of an actor. If it ends without emptying its queue (a panic), its
/// drop forgets the actor's waiting jobs, so the actor's next invocation starts a new task.
struct Runner {
    queue: Arc<Queue>,
    key: ActorKey,
    /// Sessions of the jobs being mined, not yet counted done.
    in_hand: Vec<String>,
    finished: bool,
}

impl Runner {
    async fn run(mut self, miner: Miner, mut batch: Vec<Job>) {
        loop {
            self.in_hand = batch.iter().map(|j| j.session_id.clone()).collect();
            self.mine(&miner, &batch).await;
            self.queue.done(std::mem::take(&mut self.in_hand).len());
            let mut actors = self.queue.lock();
            match actors.get_mut(&self.key) {
                Some(waiting) if !waiting.is_empty() => {
                    let take = waiting.len().min(MAX_EXTRACTION_BATCH);
                    batch = waiting.drain(..take).collect();
                }
                _ => {
                    actors.remove(&self.key);
                    self.finished = true;
                    return;
                }
            }
        }
    }

    async fn mine(&self, miner: &Miner, batch: &[Job]) {
        let q = &self.queue;
        let sessions: Vec<String> = batch.iter().map(|j| j.session_id.clone()).collect();
        let conversations: Vec<Conversation<'_>> = batch
            .iter()
            .map(|j| Conversation {
                messages: &j.messages,
                session_id: &j.session_id,
                first_message: j.first_message,
            })
            .collect();
        let started = Instant::now();
        let work = extract_memories_from(
            &*miner.model,
            &*miner.store,
            &self.key.actor,
            &conversations,
        );
        let event = match tokio::time::timeout(miner.timeout, work).await {
            Ok(Ok(outcome)) => {
                q.extractions.fetch_add(1, Ordering::SeqCst);
                q.invocations
                    .fetch_add(batch.len() as u64, Ordering::SeqCst);
                q.written
                    .fetch_add(outcome.written.len() as u64, Ordering::SeqCst);
                q.refused
                    .fetch_add(outcome.refused.len() as u64, Ordering::SeqCst);
                tracing::info!(
                    actor = %self.key.actor,
                    invocations = batch.len(),
                    written = outcome.written.len(),
                    refused = ?outcome.refused,
                    "memories extracted"
                );
                MemoryEvent::Extracted {
                    actor_id: self.key.actor.clone(),
                    sessions,
                    written: outcome.written,
                    refused: outcome.refused,
                    elapsed: started.elapsed(),
                }
            }
            Ok(Err(e)) => {
                q.failed.fetch_add(1, Ordering::SeqCst);
                // The whole chain: "extraction model call" alone does not say what failed.
                let error = crate::error::chain(&e);
                tracing::warn!(actor = %self.key.actor, %error, "memory extraction failed");
                MemoryEvent::Failed {
                    actor_id: self.key.actor.clone(),
                    sessions,
                    error,
                }
            }
            Err(_) => {
                q.failed.fetch_add(1, Ordering::SeqCst);
                let error = format!("timed out after {:?}", miner.timeout);
                tracing::warn!(actor = %self.key.actor, %error, "memory extraction failed");
                MemoryEvent::Failed {
                    actor_id: self.key.actor.clone(),
                    sessions,
                    error,
                }
            }
        };
        let _ = q.events.send(event);
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The task ended early (a panic, or the runtime shutting down): its batch and the
        // actor's waiting jobs are reported failed and no longer counted as pending.
        let waiting = self.queue.lock().remove(&self.key).unwrap_or_default();
        let mut sessions = std::mem::take(&mut self.in_hand);
        sessions.extend(waiting.into_iter().map(|j| j.session_id));
        if sessions.is_empty() {
            return;
        }
        self.queue.failed.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(actor = %self.key.actor, invocations = sessions.len(), "memory extraction ended early: these invocations are not mined");
        let n = sessions.len();
        let _ = self.queue.events.send(MemoryEvent::Failed {
            actor_id: self.key.actor.clone(),
            sessions,
            error: "the extraction task ended before it finished (a panic, or shutdown)".into(),
        });
        self.queue.done(n);
    }
}
