//! Idempotency keys: a create that carries a key its tenant used before gets the cell made with
//! it, and creates racing with one key make one cell.
//!
//! The first create with a key leads: it makes the cell and publishes the outcome on the key's
//! watch channel. Creates that come while it runs wait on that channel, asynchronously: each
//! holds a connection and a small future, never a thread (a blocking wait per create let a
//! client with a few hundred of them take every thread the node has). The waits are bounded
//! per tenant, and every waiter gets what the leader got, the cell or the same typed error.

use crate::error::ApiError;
use crate::quota::{self, Held, HeldSlot};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// (tenant, key).
type Key = (String, String);

/// Where a key's create stands.
#[derive(Clone, Debug)]
enum Outcome {
    /// Its leader runs.
    Making,
    /// It made this cell (the key stays while the cell does).
    Made(String),
    /// It failed with this error: its waiters answer the same; the key is forgotten.
    Failed(ApiError),
}

/// A key's create: where it stands, and the fingerprint of the request that claimed the key
/// (`CreateRequest::fingerprint`).
struct Claimed {
    outcome: watch::Sender<Outcome>,
    request: u64,
}

/// The keys of a node: those of cells it holds and of creates running now.
#[derive(Default)]
pub struct Keys {
    map: Mutex<HashMap<Key, Claimed>>,
    waits: Arc<Held>,
    /// Creates waiting on another create's key now, node-wide.
    pub waiting: watch::Sender<usize>,
}

/// What a claimed key gives a create.
pub enum Claim<E> {
    /// The cell made with the key, which the node still holds.
    Made(E),
    /// Nobody makes a cell with the key: this create does, and tells the others.
    Lead(Lead),
}

/// The right, and duty, to make a key's cell and tell its waiters how it went
/// ([`Lead::finish`]; dropped unfinished, say by a panic, it tells them `internal`).
pub struct Lead {
    keys: Arc<Keys>,
    key: Key,
    tx: watch::Sender<Outcome>,
    finished: bool,
}

/// One create counted in [`Keys::waiting`] while it waits.
struct Waiting<'a>(&'a watch::Sender<usize>);

impl<'a> Waiting<'a> {
    fn new(count: &'a watch::Sender<usize>) -> Waiting<'a> {
        count.send_modify(|n| *n += 1);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Keys {
    fn locked(&self) -> MutexGuard<'_, HashMap<Key, Claimed>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys remembered.
    pub fn remembered(&self) -> usize {
        self.locked().len()
    }

    /// Claims `key` for a create of `tenant` whose request has the fingerprint `request`: the
    /// cell made with it (`held` finds it among the node's cells), else the lead, after waiting
    /// for a create that runs with it now. At most `max_waits` of the tenant's creates wait at
    /// once; past that the create is refused. A key claimed by a different request (another
    /// backend, source, labels...) is refused with `idempotency_key_reused`: answering it with
    /// the first request's cell would hide that it was not made as asked.
    pub async fn claim<E>(
        self: &Arc<Self>,
        tenant: &str,
        key: &str,
        request: u64,
        max_waits: usize,
        held: impl Fn(&str) -> Option<E>,
    ) -> Result<Claim<E>, ApiError> {
        let key = (tenant.to_string(), key.to_string());
        let mut slot: Option<HeldSlot> = None;
        loop {
            let mut rx = {
                let mut map = self.locked();
                let now = map.get(&key).map(|c| {
                    let outcome = c.outcome.borrow().clone();
                    (outcome, c.outcome.subscribe(), c.request)
                });
                let reused = |outcome: &Outcome| match outcome {
                    Outcome::Making => true,
                    Outcome::Made(id) => held(id).is_some(),
                    Outcome::Failed(_) => false,
                };
                if let Some((outcome, _, first)) = &now
                    && *first != request
                    && reused(outcome)
                {
                    return Err(ApiError::new(
                        "idempotency_key_reused",
                        "this idempotency key was used with a different request; use a new key",
                    ));
                }
                match now.map(|(outcome, rx, _)| (outcome, rx)) {
                    Some((Outcome::Making, rx)) => rx,
                    // No key, or its cell is gone: this create makes one.
                    other => {
                        if let Some((Outcome::Made(id), _)) = other
                            && let Some(cell) = held(&id)
                        {
                            return Ok(Claim::Made(cell));
                        }
                        let tx = watch::Sender::new(Outcome::Making);
                        let claimed = Claimed {
                            outcome: tx.clone(),
                            request,
                        };
                        map.insert(key.clone(), claimed);
                        return Ok(Claim::Lead(Lead {
                            keys: self.clone(),
                            key,
                            tx,
                            finished: false,
                        }));
                    }
                }
            };
            if slot.is_none() {
                slot = Some(self.waits.take(tenant, max_waits).ok_or_else(|| {
                    quota::refuse(
                        tenant,
                        "idempotent_waits",
                        format!(
                            "tenant `{tenant}` has {max_waits} creates waiting on others with the same idempotency key, the most allowed"
                        ),
                    )
                })?);
            }
            let outcome = {
                let _waiting = Waiting::new(&self.waiting);
                rx.wait_for(|o| !matches!(o, Outcome::Making))
                    .await
                    .map(|o| o.clone())
            };
            match outcome {
                Ok(Outcome::Made(id)) => {
                    if let Some(cell) = held(&id) {
                        return Ok(Claim::Made(cell));
                    }
                }
                Ok(Outcome::Failed(e)) => return Err(e),
                // The cell was gone before this create saw it, or the lead vanished: the key
                // is claimed again.
                Ok(Outcome::Making) | Err(_) => {}
            }
        }
    }

    /// Forgets `key` if it names cell `id` (the cell is gone): the map holds keys of cells the
    /// node holds and of creates running, so it cannot grow with keys nobody can use.
    pub fn forget(&self, tenant: &str, key: &str, id: &str) {
        let key = (tenant.to_string(), key.to_string());
        let mut map = self.locked();
        if map
            .get(&key)
            .is_some_and(|c| matches!(&*c.outcome.borrow(), Outcome::Made(made) if made == id))
        {
            map.remove(&key);
        }
    }
}

impl Lead {
    /// Tells the waiters how the create went. A cell is remembered under the key while `held`
    /// finds it (one removed before this runs is not); a failure forgets the key.
    pub fn finish(mut self, made: Result<&str, &ApiError>, held: impl Fn(&str) -> bool) {
        self.finished = true;
        let mut map = self.keys.locked();
        let keep = match made {
            Ok(id) => {
                self.tx.send_replace(Outcome::Made(id.to_string()));
                held(id)
            }
            Err(e) => {
                self.tx.send_replace(Outcome::Failed(e.clone()));
                false
            }
        };
        if !keep
            && map
                .get(&self.key)
                .is_some_and(|c| c.outcome.same_channel(&self.tx))
        {
            map.remove(&self.key);
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            self.tx.send_replace(Outcome::Failed(ApiError::new(
                "internal",
                "the create with this idempotency key failed inside the server",
            )));
            let mut map = self.keys.locked();
            if map
                .get(&self.key)
                .is_some_and(|c| c.outcome.same_channel(&self.tx))
            {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(c: Claim<String>) -> Lead {
        match c {
            Claim::Lead(l) => l,
            Claim::Made(id) => panic!("made {id}"),
        }
    }

    #[tokio::test]
    async fn waiters_get_the_leaders_cell_or_its_error_and_are_bounded() {
        let keys = Arc::new(Keys::default());
        let held = |id: &str| (id == "c1").then(|| id.to_string());
        let first = lead(keys.claim("t", "k", 7, 2, held).await.unwrap());
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let keys = keys.clone();
                tokio::spawn(async move { keys.claim("t", "k", 7, 2, held).await })
            })
            .collect();
        keys.waiting
            .subscribe()
            .wait_for(|n| *n == 2)
            .await
            .unwrap();
        let refused = keys.claim("t", "k", 7, 2, held).await.err().unwrap();
        assert_eq!(refused.quota, Some("idempotent_waits"));
        first.finish(Ok("c1"), |_| true);
        for w in waiters {
            assert!(matches!(w.await.unwrap(), Ok(Claim::Made(id)) if id == "c1"));
        }
        assert_eq!(keys.remembered(), 1);
        keys.forget("t", "k", "c1");
        assert_eq!(keys.remembered(), 0);

        // A failure: the waiter gets the same error, and the key is forgotten.
        let first = lead(keys.claim("t", "k", 7, 2, held).await.unwrap());
        let waiter = {
            let keys = keys.clone();
            tokio::spawn(async move { keys.claim("t", "k", 7, 2, held).await })
        };
        keys.waiting
            .subscribe()
            .wait_for(|n| *n == 1)
            .await
            .unwrap();
        first.finish(Err(&ApiError::new("runtime", "boom")), |_| true);
        let e = waiter.await.unwrap().err().unwrap();
        assert_eq!((e.code.as_str(), e.message.as_str()), ("runtime", "boom"));
        assert_eq!(keys.remembered(), 0);

        // A lead dropped unfinished fails its waiters with `internal`, and a new claim leads.
        let first = lead(keys.claim("t", "k", 7, 2, held).await.unwrap());
        drop(first);
        assert_eq!(keys.remembered(), 0);
        lead(keys.claim("t", "k", 7, 2, held).await.unwrap());
    }

    #[tokio::test]
    async fn a_key_claimed_by_another_request_is_refused_while_its_create_runs_or_cell_lives() {
        let keys = Arc::new(Keys::default());
        let held = |id: &str| (id == "c1").then(|| id.to_string());
        let reused = |r: Result<Claim<String>, ApiError>| match r {
            Err(e) => e.code == "idempotency_key_reused",
            Ok(_) => false,
        };
        let first = lead(keys.claim("t", "k", 7, 2, held).await.unwrap());
        // While its create runs: refused at once, not made to wait.
        assert!(reused(keys.claim("t", "k", 8, 2, held).await));
        // Another tenant's key of the same name is its own.
        lead(keys.claim("u", "k", 8, 2, held).await.unwrap());
        first.finish(Ok("c1"), |_| true);
        assert!(reused(keys.claim("t", "k", 8, 2, held).await));
        assert!(matches!(
            keys.claim("t", "k", 7, 2, held).await,
            Ok(Claim::Made(id)) if id == "c1"
        ));
        // Its cell gone, the key is free for any request.
        let gone = |_: &str| None::<String>;
        lead(keys.claim("t", "k", 8, 2, gone).await.unwrap());
    }
}
