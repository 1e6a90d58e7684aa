//! The worker pool: claims queued steps with a short `SKIP LOCKED`
//! transaction, runs them under a lease renewed by heartbeat, and reports
//! each result fenced by its attempt. Wakes on `NOTIFY`, polls as fallback.
//! On shutdown it stops claiming, lets running steps finish until the grace
//! deadline, then ends and releases what is left for another worker.

pub mod maintenance;
pub mod parameters;
pub mod webhook;

use std::{
    any::Any,
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use futures::FutureExt;

use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::{
    sync::{broadcast, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    config::Config,
    engine::{self, NextClaim, StepOutcome},
    executor::{self, Run, StepContext},
    ids::Arns,
    notify::{self, Notifier},
    secrets::Keyring,
    store::{
        self,
        steps::{self, ClaimedStep},
        transitions, StoreError,
    },
};

/// The least time between two claims woken by work notices.
const CLAIM_DEBOUNCE: Duration = Duration::from_millis(10);

/// A step this process is running.
struct Running {
    execution_id: Uuid,
    /// Fires to end the step's process: stop requested or lease lost.
    stop: CancellationToken,
    /// When the request that took or last renewed its lease was sent.
    renewed: tokio::time::Instant,
}

#[derive(Clone)]
pub struct WorkerPool {
    inner: Arc<Inner>,
}

struct Inner {
    db: PgPool,
    config: Arc<Config>,
    arns: Arns,
    notifier: Notifier,
    worker_id: Uuid,
    /// Keyed by step run and attempt: this process may hold a new attempt
    /// of a step whose old attempt (rescued from it) is still ending here.
    running: Mutex<HashMap<(Uuid, i32), Running>>,
    /// Cancelled at the end of the shutdown grace period: running steps are
    /// ended and released rather than reported.
    abandon: CancellationToken,
    webhooks: webhook::Webhooks,
    supervisor: executor::supervised::Supervisor,
    keyring: Keyring,
    /// Claim queries the loop has sent (see `WorkerPool::claims`).
    claims: AtomicU64,
    parameters: parameters::Parameters,
}

impl WorkerPool {
    pub fn new(db: PgPool, config: Arc<Config>, notifier: Notifier, keyring: Keyring) -> WorkerPool {
        WorkerPool {
            inner: Arc::new(Inner {
                keyring,
                arns: Arns::new(&config.arn),
                supervisor: executor::supervised::Supervisor::new(
                    executor::command::supervisor_program(&config),
                    &config.worker.run_as_user,
                ),
                webhooks: webhook::Webhooks::new(&config.callbacks),
                db,
                config,
                notifier,
                worker_id: Uuid::now_v7(),
                running: Mutex::new(HashMap::new()),
                abandon: CancellationToken::new(),
                claims: AtomicU64::new(0),
                parameters: parameters::Parameters::default(),
            }),
        }
    }

    pub fn worker_id(&self) -> Uuid {
        self.inner.worker_id
    }

    /// How many claim queries the claim loop has sent (not counting the
    /// claims that come with a report): what notices and polling cost.
    pub fn claims(&self) -> u64 {
        self.inner.claims.load(Ordering::Relaxed)
    }

    /// Runs until `shutdown`, then drains.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let concurrency = inner.config.worker.concurrency.max(1);
        tracing::info!(worker.id = %inner.worker_id, concurrency, "worker pool started");
        let permits = Arc::new(Semaphore::new(concurrency));
        let mut notices = inner.notifier.subscribe();
        let mut tasks = JoinSet::new();
        let heartbeat = tokio::spawn(self.clone().heartbeat());
        let poll = Duration::from_millis(inner.config.worker.poll_interval_ms);
        let wake = Arc::new(tokio::sync::Notify::new());

        let mut last_claim = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            let free = permits.available_permits();
            let mut claimed_all = false;
            let mut claimed_none = true;
            if free > 0 {
                inner.claims.fetch_add(1, Ordering::Relaxed);
                last_claim = tokio::time::Instant::now();
                match steps::claim(
                    &inner.db,
                    inner.worker_id,
                    free as i64,
                    inner.config.worker.lease_seconds as f64,
                )
                .await
                {
                    Ok(claimed) if shutdown.is_cancelled() => {
                        // The signal came while the claim was in flight: nothing starts after it.
                        for step in &claimed {
                            self.hand_back(step).await;
                        }
                        break;
                    }
                    Ok(claimed) => {
                        claimed_all = claimed.len() == free;
                        claimed_none = claimed.is_empty();
                        for step in claimed {
                            let permit = permits.clone().acquire_owned().await.expect("semaphore open");
                            let pool = self.clone();
                            let wake = wake.clone();
                            let shutdown = shutdown.clone();
                            tasks.spawn(async move {
                                // A step that makes its successors runnable is
                                // followed by one of them on this task at once:
                                // chains run without a round trip through the loop.
                                let mut next = Some(step);
                                while let Some(step) = next.take() {
                                    next = pool.execute(step, &shutdown).await;
                                    if let Some(step) = next.as_ref().filter(|_| shutdown.is_cancelled()) {
                                        // Claimed with a report just as the signal came:
                                        // handed back, never started.
                                        pool.hand_back(step).await;
                                        next = None;
                                    }
                                }
                                drop(permit);
                                wake.notify_one();
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming steps failed; retrying"),
                }
            }
            // Reap finished tasks so the set does not grow.
            while let Some(joined) = tasks.try_join_next() {
                log_task_end(joined);
            }
            if claimed_all && permits.available_permits() > 0 {
                continue;
            }
            let wait = if claimed_none { self.next_wake(poll).await } else { poll };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                () = self.work_notice(&mut notices) => {
                    // Debounced: the work notices of a burst (a fan-out's
                    // transitions) that arrive meanwhile make one claim.
                    if let Some(rest) = CLAIM_DEBOUNCE.checked_sub(last_claim.elapsed()) {
                        tokio::time::sleep(rest).await;
                    }
                    self.take_queued_notices(&mut notices);
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }

        self.drain(tasks).await;
        heartbeat.abort();
        if let Err(e) = heartbeat.await {
            if e.is_panic() {
                tracing::error!(error = %panic_message(&*e.into_panic()), "the heartbeat task panicked");
            }
        }
        tracing::info!(worker.id = %inner.worker_id, "worker pool stopped");
    }

    /// Returns at the next notice that may mean work to claim: a work
    /// notice, or notices lost to lag. Stop notices are acted on here; the
    /// others (each transition, each running step's log) are not this
    /// loop's business and wake nothing.
    async fn work_notice(&self, notices: &mut broadcast::Receiver<notify::Notice>) {
        loop {
            match notices.recv().await {
                Ok(n) if n.channel == notify::WORK => return,
                Ok(n) if n.channel == notify::STOP => self.stop_execution_steps(&n.payload),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                // No notices any more: polling alone wakes the loop.
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }

    /// Takes the notices already queued (a claim follows, which covers every
    /// work notice among them), acting on stop notices.
    fn take_queued_notices(&self, notices: &mut broadcast::Receiver<notify::Notice>) {
        loop {
            match notices.try_recv() {
                Ok(n) if n.channel == notify::STOP => self.stop_execution_steps(&n.payload),
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    }

    /// How long to sleep when there is nothing to claim: until the next
    /// delayed retry becomes due, at most the poll interval.
    async fn next_wake(&self, poll: Duration) -> Duration {
        let next = steps::next_available_in(&self.inner.db).await.unwrap_or(None);
        match next {
            Some(secs) if secs <= 0.0 => Duration::from_millis(5),
            Some(secs) => Duration::from_secs_f64(secs).min(poll),
            None => poll,
        }
    }

    async fn drain(&self, mut tasks: JoinSet<()>) {
        let grace = Duration::from_secs(self.inner.config.worker.shutdown_grace_seconds);
        let count = tasks.len();
        if count > 0 {
            tracing::info!(
                running = count,
                grace_seconds = grace.as_secs(),
                "draining running steps"
            );
        }
        let drained = tokio::time::timeout(grace, async {
            while let Some(joined) = tasks.join_next().await {
                log_task_end(joined);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("grace period over; ending and releasing the steps still running");
            self.inner.abandon.cancel();
            for running in self.inner.running.lock().unwrap().values() {
                running.stop.cancel();
            }
            while let Some(joined) = tasks.join_next().await {
                log_task_end(joined);
            }
        }
    }

    fn stop_execution_steps(&self, execution_id: &str) {
        let Ok(execution_id) = Uuid::parse_str(execution_id) else {
            return;
        };
        for running in self.inner.running.lock().unwrap().values() {
            if running.execution_id == execution_id {
                running.stop.cancel();
            }
        }
    }

    /// Renews the leases of running steps; ends those whose lease was lost
    /// or whose execution is stopping, and those whose lease it could not
    /// renew in time (see `end_unrenewed`).
    async fn heartbeat(self) {
        let worker = &self.inner.config.worker;
        let lease = worker.lease_seconds as f64;
        let every = Duration::from_secs_f64((lease / 3.0).max(0.2));
        // Ended this long after the last renewal sent, the step's process
        // group is gone (SIGKILL after the kill grace at the latest) when
        // the lease expires and another worker may take the step over.
        let limit = Duration::from_secs_f64((lease - worker.kill_grace_seconds as f64).max(lease / 2.0));
        let tick = (every / 4).max(Duration::from_millis(50));
        // Leases are renewed during the drain too, until `run` aborts this task.
        loop {
            let next_beat = tokio::time::Instant::now() + every;
            while tokio::time::Instant::now() < next_beat {
                tokio::time::sleep(tick).await;
                self.end_unrenewed(limit);
            }
            // A heartbeat the database is slow to answer is waited for,
            // while the deadlines are still watched.
            let beat = self.beat(lease);
            tokio::pin!(beat);
            loop {
                tokio::select! {
                    () = &mut beat => break,
                    _ = tokio::time::sleep(tick) => self.end_unrenewed(limit),
                }
            }
        }
    }

    /// Ends the steps whose lease was last renewed (or taken) `limit` ago or
    /// more: when the database cannot be reached, the lease will expire and
    /// the step be rescued and run again elsewhere; it must not run on here.
    fn end_unrenewed(&self, limit: Duration) {
        for (key, running) in self.inner.running.lock().unwrap().iter() {
            if running.renewed.elapsed() >= limit && !running.stop.is_cancelled() {
                tracing::warn!(
                    step_run.id = %key.0,
                    attempt = key.1,
                    unrenewed_seconds = running.renewed.elapsed().as_secs_f64(),
                    "the lease could not be renewed; ending the step before it expires"
                );
                running.stop.cancel();
            }
        }
    }

    /// One heartbeat: renews the leases of the attempts running now.
    async fn beat(&self, lease: f64) {
        // Only the attempts running now are renewed and judged: a step
        // claimed while the query is in flight is not mistaken for lost,
        // and a step whose report failed is not kept alive by its lease.
        let snapshot: Vec<(Uuid, i32)> = self.inner.running.lock().unwrap().keys().copied().collect();
        if snapshot.is_empty() {
            return;
        }
        let mut ids: Vec<Uuid> = snapshot.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        // The database sets the new expiry after this instant.
        let sent = tokio::time::Instant::now();
        let beat = match transitions::heartbeat(&self.inner.db, self.inner.worker_id, &ids, lease).await {
            Ok(beat) => beat,
            Err(e) => return tracing::warn!(error = %e, "heartbeat failed"),
        };
        let held: HashMap<Uuid, (i32, String)> = beat.held.into_iter().map(|(id, a, s)| (id, (a, s))).collect();
        let mut running = self.inner.running.lock().unwrap();
        for key in &snapshot {
            let Some(running) = running.get_mut(key) else {
                continue;
            };
            match held.get(&key.0) {
                Some((attempt, status)) if *attempt == key.1 => {
                    running.renewed = sent;
                    if status != "Executing" {
                        running.stop.cancel();
                    }
                }
                // Locked by a transition right now: judged next time.
                None if beat.busy.contains(&key.0) => {}
                _ => {
                    tracing::warn!(step_run.id = %key.0, attempt = key.1, "lease lost; ending the step");
                    running.stop.cancel();
                }
            }
        }
    }

    /// Reports an attempt, retrying while the failure is transient (the
    /// database unreachable, a conflict that aborted the transaction): the
    /// step stays in the running set meanwhile, so its lease is renewed once
    /// the database is back and its result is not lost to a blip. A success
    /// the database refuses to store is not a blip: the step fails at once,
    /// naming the problem. A step made runnable is claimed with the report
    /// unless shutdown has begun.
    async fn report(
        &self,
        step: &ClaimedStep,
        mut outcome: StepOutcome,
        log: Option<&[u8]>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<ClaimedStep>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut delay = Duration::from_millis(200);
        let next = NextClaim {
            worker_id: self.inner.worker_id,
            lease_seconds: self.inner.config.worker.lease_seconds as f64,
        };
        loop {
            let db = &self.inner.db;
            let reported = if shutdown.is_cancelled() {
                engine::complete_attempt(db, step.id, step.attempt, outcome.clone(), log)
                    .await
                    .map(|applied| (applied, None))
            } else {
                engine::complete_and_claim(db, step.id, step.attempt, outcome.clone(), log, next, step.leaf).await
            };
            match reported {
                Ok((_, claimed)) => return Ok(claimed),
                Err(StoreError::Database(e))
                    if store::is_transient(&e) && tokio::time::Instant::now() + delay < deadline =>
                {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "reporting a step failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(StoreError::Database(e))
                    if !store::is_transient(&e) && matches!(outcome, StepOutcome::Succeeded { .. }) =>
                {
                    tracing::warn!(error = %e, "the database refused a step's result; failing the step");
                    outcome = StepOutcome::failed(
                        "Command.FAILED",
                        format!("the step's outputs could not be stored: {}", store_message(&e)),
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Hands a claimed attempt back at shutdown (recorded as interrupted).
    /// Returns false when there was nothing to release (the attempt is
    /// Stopping, or no longer this worker's): the caller reports it instead.
    /// A failure to reach the database leaves it to its lease (true).
    async fn release(&self, step: &ClaimedStep, log: Option<&[u8]>) -> bool {
        let released = async {
            let mut conn = self.inner.db.acquire().await?;
            transitions::release(&mut conn, step.id, step.attempt, self.inner.worker_id, log).await
        };
        match released.await {
            Ok(true) => {
                tracing::info!(execution.id = %step.execution_id, step.name = %step.step_name, attempt = step.attempt, "released at shutdown");
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(execution.id = %step.execution_id, step.name = %step.step_name, error = %e, "releasing a step failed; its lease will expire and it will be rescued");
                true
            }
        }
    }

    /// Hands back an attempt claimed but never started, at shutdown: released
    /// for another worker, or, when its execution is being stopped (nothing
    /// to release), reported Stopped at once rather than left to its lease.
    async fn hand_back(&self, step: &ClaimedStep) {
        if self.release(step, None).await {
            return;
        }
        let outcome = StepOutcome::Stopped {
            message: "the execution was stopped before the step started".into(),
        };
        if let Err(e) = engine::complete_attempt(&self.inner.db, step.id, step.attempt, outcome, None).await {
            tracing::warn!(execution.id = %step.execution_id, step.name = %step.step_name, error = %e, "reporting a step failed; its lease will expire and it will be rescued");
        }
    }

    /// Runs one claimed attempt and reports it. Returns a step that
    /// reporting made runnable, claimed for this worker (not after shutdown).
    async fn execute(&self, mut step: ClaimedStep, shutdown: &CancellationToken) -> Option<ClaimedStep> {
        let inner = &self.inner;
        let stop = CancellationToken::new();
        let key = (step.id, step.attempt);
        inner.running.lock().unwrap().insert(
            key,
            Running {
                execution_id: step.execution_id,
                stop: stop.clone(),
                renewed: tokio::time::Instant::now(),
            },
        );
        // Out of the running set however this ends, a panic included: the
        // heartbeat must not renew the lease of an attempt nobody runs.
        let _running = RunningEntry { inner, key };
        let span = tracing::info_span!("step", execution.id = %step.execution_id, step.name = %step.step_name, attempt = step.attempt);
        let ran = match inner.parameters.of(&inner.db, step.execution_id).await {
            Ok(parameters) => {
                step.parameters = parameters;
                AssertUnwindSafe(self.run_claimed(&step, stop, shutdown))
                    .catch_unwind()
                    .instrument(span.clone())
                    .await
            }
            Err(e) => {
                let message = format!("loading the execution's parameters failed: {e}");
                let outcome = StepOutcome::failed("Step.SERVICE_FAULT", message);
                Ok(self
                    .report(&step, outcome, None, shutdown)
                    .instrument(span.clone())
                    .await)
            }
        };
        let result = match ran {
            Ok(result) => result,
            Err(panic) => {
                // A bug under the step (executor, engine, store) ends its
                // attempt as a service fault, retried by policy like a lost
                // worker; a process it ran was ended when its handle dropped.
                let message = format!("the worker failed while running the step: {}", panic_message(&*panic));
                tracing::error!(parent: &span, error = %message, "a step's task panicked; failing the attempt");
                let outcome = StepOutcome::failed("Step.SERVICE_FAULT", message);
                self.report(&step, outcome, None, shutdown).instrument(span).await
            }
        };
        match result {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(execution.id = %step.execution_id, step.name = %step.step_name, error = %e, "reporting a step failed; its lease will expire and it will be rescued");
                None
            }
        }
    }

    async fn run_claimed(
        &self,
        step: &ClaimedStep,
        stop: CancellationToken,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<ClaimedStep>> {
        let inner = &self.inner;
        let ctx = StepContext {
            db: &inner.db,
            step,
            arns: &inner.arns,
            config: &inner.config,
            supervisor: &inner.supervisor,
            keyring: &inner.keyring,
        };
        match executor::run(&ctx, stop).await {
            Run::Done { outcome, log } => {
                if inner.abandon.is_cancelled()
                    && !matches!(outcome, StepOutcome::Succeeded { .. })
                    && self.release(step, log.as_deref()).await
                {
                    // Shutdown ended it: handed to another worker instead of failed.
                    return Ok(None);
                }
                // Not released (a stop was asked for, so the step is
                // Stopping; or it is no longer this worker's): reported now,
                // not left to wait for its lease.
                return self.report(step, outcome, log.as_deref(), shutdown).await;
            }
            Run::WaitForCallback {
                token,
                timeout_seconds,
                url,
                sqs_queue_url,
                arguments,
            } => {
                let waiting = engine::begin_callback(
                    &inner.db,
                    step.id,
                    step.attempt,
                    token,
                    timeout_seconds,
                    sqs_queue_url.as_deref(),
                )
                .await?;
                if !waiting {
                    // Stopped (or rescued) before the wait began: say so, fenced
                    // like any report, rather than leave the step to its lease.
                    let message = "the execution was stopped before the callback wait began".to_string();
                    return self
                        .report(step, StepOutcome::Stopped { message }, None, shutdown)
                        .await;
                }
                if let Some(url) = url {
                    self.call_webhook(step, token, &url, arguments).await?;
                }
            }
            Run::Expand { items } => match engine::for_each::expand(&inner.db, step.id, step.attempt, &items).await? {
                engine::for_each::Expanded::Waiting => {}
                engine::for_each::Expanded::Stale => {
                    let message = "the execution was stopped before the iterations were made".to_string();
                    return self
                        .report(step, StepOutcome::Stopped { message }, None, shutdown)
                        .await;
                }
                engine::for_each::Expanded::Failed(message) => {
                    let outcome = StepOutcome::failed("ForEach.NOT_RUN", message);
                    return self.report(step, outcome, None, shutdown).await;
                }
            },
        }
        Ok(None)
    }

    /// Sends the callback token to the step's webhook. A webhook that cannot
    /// be reached, or answers other than 2xx, fails the attempt as a service
    /// fault (retried by default); one the policy refuses (its scheme, an
    /// inward address) fails it as `Step.INPUT_ERROR`, since calling again
    /// cannot help.
    async fn call_webhook(&self, step: &ClaimedStep, token: Uuid, url: &str, arguments: Value) -> anyhow::Result<()> {
        let body = json!({
            "token": token,
            "execution_arn": self.inner.arns.execution(&step.pipeline_name, step.execution_id),
            "step_name": step.step_name,
            "arguments": arguments,
        });
        let (error_type, message) = match self.inner.webhooks.post(url, &body).await {
            Ok(()) => return Ok(()),
            Err(webhook::Failure::Refused(message)) => (executor::INPUT_ERROR, message),
            Err(webhook::Failure::Failed(message)) => ("Step.SERVICE_FAULT", message),
        };
        tracing::warn!(error = %message, "the callback webhook failed");
        let outcome = StepOutcome::failed(error_type, message);
        engine::complete_attempt(&self.inner.db, step.id, step.attempt, outcome, None).await?;
        Ok(())
    }
}

/// Removes an attempt from the running set when dropped.
struct RunningEntry<'a> {
    inner: &'a Inner,
    key: (Uuid, i32),
}

impl Drop for RunningEntry<'_> {
    fn drop(&mut self) {
        // Never a second panic while unwinding: a poisoned set is still usable.
        let mut running = self.inner.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.remove(&self.key);
    }
}

/// The message a panic carried (`panic!` with a literal or a format).
fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        message.to_string()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// A step task that ended by a panic (not caught around the step itself:
/// in a report or a release) is logged, never dropped silently.
fn log_task_end(joined: Result<(), tokio::task::JoinError>) {
    match joined {
        Ok(()) => {}
        Err(e) if e.is_panic() => {
            let message = panic_message(&*e.into_panic());
            tracing::error!(error = %message, "a step task panicked");
        }
        Err(e) => tracing::warn!(error = %e, "a step task was cancelled"),
    }
}

/// What PostgreSQL said, without the driver's wrapping.
fn store_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}
