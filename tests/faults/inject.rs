//! The fault plan of a round and how each fault is applied: pauses past
//! the lease, kills, shutdowns and terminated database backends. The races
//! (stops, callback reports) are in `races`, the backend kills inside a
//! ForEach's expansion and conclusion in `for_each`.

use std::time::Duration;

use nix::sys::signal::Signal;
use uuid::Uuid;

use crate::{
    dag::{first_for_each, Kind, Needs, Rng, Spec},
    harness::{ended_count, poll, Harness},
    round::Round,
};

// ---------------------------------------------------------------------------
// The fault plan.

#[derive(Debug, Clone, Copy)]
pub enum PauseHow {
    /// The step's process ends while its worker is paused; then its lease is
    /// expired in SQL and the worker resumed while the harness runs the
    /// rescuer: the late report races the rescue.
    ReportRacesRescue,
    /// The lease is expired in SQL and the rescue awaited before resuming:
    /// the late report is stale. With `others_paused`, every other worker is
    /// paused too until the resumed one has claimed the rescued step again.
    RescuedFirst { others_paused: bool },
    /// No SQL: the lease runs out by itself, then the worker resumes.
    NaturalExpiry,
}

#[derive(Debug, Clone, Copy)]
/// What a success report of a waiting callback is raced against.
pub enum CallbackRace {
    /// A failure report of the same token.
    Failure,
    /// A stop of its execution.
    Stop,
    /// Its time-out (deadline set in the past, the time-out handler run).
    Timeout,
    /// A second success report.
    Twice,
}

#[derive(Debug, Clone)]
pub enum Fault {
    Pause(PauseHow),
    Kill {
        after_process_end: bool,
        expire_lease: bool,
    },
    Terminate {
        times: usize,
    },
    /// Concurrent stops of the newest execution, with a callback report of
    /// one of its waiting callbacks when there is one.
    Stop {
        twice: bool,
    },
    Callback {
        step: String,
        race: CallbackRace,
    },
    /// SIGTERM to a worker running a (preferably long) step: it must exit 0
    /// within its grace periods and hand the step back under a new attempt.
    Shutdown,
    /// The database backend writing a ForEach's iterations (`conclusion`:
    /// ending the ForEach after its last iteration) is terminated mid-way.
    ForEachKill {
        conclusion: bool,
    },
}

/// Every kind of fault, as the run's report counts them. Each must fire at
/// least once per run.
pub const KINDS: [&str; 8] = [
    "pause",
    "kill",
    "terminate",
    "stop",
    "callback",
    "shutdown",
    "foreach-expansion",
    "foreach-conclusion",
];

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Pause(_) => "pause",
            Fault::Kill { .. } => "kill",
            Fault::Terminate { .. } => "terminate",
            Fault::Stop { .. } => "stop",
            Fault::Callback { .. } => "callback",
            Fault::Shutdown => "shutdown",
            Fault::ForEachKill { conclusion: false } => "foreach-expansion",
            Fault::ForEachKill { conclusion: true } => "foreach-conclusion",
        }
    }
}

/// The kinds a round plans whatever else it draws: two of [`KINDS`] chosen
/// by its seed, so that consecutive seeds (a run's rounds) plan every kind
/// within four rounds, and a round replayed alone plans the same.
pub fn forced_kinds(seed: u64) -> [&'static str; 2] {
    let n = KINDS.len() as u64;
    [KINDS[(seed * 2 % n) as usize], KINDS[((seed * 2 + 1) % n) as usize]]
}

/// What the pipeline must hold for `kinds` to have a trigger.
pub fn needs_of(kinds: &[&str]) -> Needs {
    Needs {
        callback: kinds.contains(&"callback"),
        for_each: kinds.iter().any(|k| k.starts_with("foreach")),
    }
}

pub fn generate_faults(rng: &mut Rng, specs: &[Spec], forced: &[&str]) -> Vec<Fault> {
    let callbacks: Vec<String> = specs
        .iter()
        .filter(|s| matches!(s.kind, Kind::Callback { .. }))
        .map(|s| s.name.clone())
        .collect();
    let for_each = first_for_each(specs).is_some();
    let index_of = |kind: &str| KINDS.iter().position(|k| *k == kind).unwrap();
    let mut picks: Vec<usize> = forced.iter().map(|k| index_of(k)).collect();
    for _ in 0..rng.range(0, 2) {
        let weights = [
            30,
            15,
            20,
            15,
            if callbacks.is_empty() { 0 } else { 20 },
            10,
            if for_each { 8 } else { 0 },
            if for_each { 8 } else { 0 },
        ];
        picks.push(rng.weighted(&weights));
    }
    picks
        .into_iter()
        .map(|pick| match pick {
            0 => Fault::Pause(match rng.below(3) {
                0 => PauseHow::ReportRacesRescue,
                1 => PauseHow::RescuedFirst {
                    others_paused: rng.chance(50),
                },
                _ => PauseHow::NaturalExpiry,
            }),
            1 => Fault::Kill {
                after_process_end: rng.chance(50),
                expire_lease: rng.chance(50),
            },
            2 => Fault::Terminate { times: rng.range(1, 4) },
            3 => Fault::Stop { twice: rng.chance(50) },
            5 => Fault::Shutdown,
            6 => Fault::ForEachKill { conclusion: false },
            7 => Fault::ForEachKill { conclusion: true },
            _ => Fault::Callback {
                step: callbacks[rng.below(callbacks.len())].clone(),
                race: [
                    CallbackRace::Failure,
                    CallbackRace::Stop,
                    CallbackRace::Timeout,
                    CallbackRace::Twice,
                ][rng.below(4)],
            },
        })
        .collect()
}

impl Harness {
    /// Applies `fault` and counts it (planned, fired) in `fault_counts`.
    pub async fn apply(&mut self, round: &mut Round, fault: &Fault) {
        let fired = match fault.clone() {
            Fault::Pause(how) => self.pause(round, how).await,
            Fault::Kill {
                after_process_end,
                expire_lease,
            } => self.kill(round, after_process_end, expire_lease).await,
            Fault::Shutdown => self.shutdown(round).await,
            Fault::Terminate { times } => self.terminate(round, times).await,
            Fault::Stop { twice } => self.stop_race(round, twice).await,
            Fault::Callback { step, race } => self.callback_race(round, step, race).await,
            Fault::ForEachKill { conclusion } => self.for_each_kill(round, conclusion).await,
        };
        let counts = self.fault_counts.entry(fault.kind()).or_default();
        counts.planned += 1;
        counts.fired += usize::from(fired);
    }

    /// Whether it fired.
    async fn kill(&mut self, round: &mut Round, after_process_end: bool, expire_lease: bool) -> bool {
        let found = if after_process_end {
            self.running_command(&round.executions).await
        } else {
            self.running_long_command(round).await
        };
        let Some((w, step)) = found else {
            round.log.push("kill: no trigger".into());
            return false;
        };
        if after_process_end {
            // The result exists but is never reported.
            self.workers[w].signal(Signal::SIGSTOP);
            self.process_ended(round, &step, Duration::from_secs(5)).await;
        }
        let id = self.workers[w].worker_id.unwrap();
        self.workers[w].kill().await;
        self.workers.remove(w);
        if expire_lease {
            self.expire_leases_of(id).await.expect("a dead worker's leases expire");
        }
        self.spawn_worker().await;
        round.log.push(format!(
            "kill: {} running {} (attempt {})",
            id, step.step_name, step.attempt
        ));
        true
    }

    /// Whether it fired.
    async fn shutdown(&mut self, round: &mut Round) -> bool {
        let Some((w, step)) = self.running_long_command(round).await else {
            round.log.push("shutdown: no trigger".into());
            return false;
        };
        let id = self.workers[w].worker_id.unwrap();
        self.workers[w].signal(Signal::SIGTERM);
        // Shutdown grace 1 s, kill grace 1 s, then the release.
        let limit = Duration::from_secs(10);
        let exit = tokio::time::timeout(limit, self.workers[w].child.wait()).await;
        let mut worker = self.workers.remove(w);
        match exit {
            Ok(Ok(status)) if status.success() => {}
            Ok(ref other) => round.violation(
                self,
                format!("Shutdown: worker {id} exited with {other:?} after SIGTERM"),
            ),
            Err(_) => {
                round.violation(
                    self,
                    format!(
                        "Shutdown: worker {id} did not exit within {}s of SIGTERM",
                        limit.as_secs()
                    ),
                );
                worker.kill().await;
            }
        }
        self.spawn_worker().await;
        round.log.push(format!(
            "shutdown: {id} running {} (attempt {}): {exit:?}",
            step.step_name, step.attempt
        ));
        true
    }

    /// Whether it fired: some service backend was terminated.
    async fn terminate(&mut self, round: &mut Round, times: usize) -> bool {
        let mut total = 0;
        for _ in 0..times {
            let ended_before = self.ended_attempts(&round.executions).await;
            let n = self.terminate_backends().await;
            total += n;
            round.log.push(format!("terminate: {n} backends"));
            // Wait for progress (or time) before the next one.
            let db = self.db.clone();
            let executions = round.executions.clone();
            poll(Duration::from_secs(3), || {
                let db = db.clone();
                let executions = executions.clone();
                async move {
                    let now = ended_count(&db, &executions).await;
                    (now > ended_before).then_some(())
                }
            })
            .await;
        }
        total > 0
    }

    /// Whether it fired.
    pub async fn pause(&mut self, round: &mut Round, how: PauseHow) -> bool {
        let Some((w, step)) = self.running_command(&round.executions).await else {
            round.log.push("pause: no trigger".into());
            return false;
        };
        let worker_id = self.workers[w].worker_id.unwrap();
        self.pause_worker(w);
        let mut note = format!(
            "pause {how:?}: {} running {} attempt {}",
            worker_id, step.step_name, step.attempt
        );
        match how {
            PauseHow::ReportRacesRescue => {
                let ended = self.process_ended(round, &step, Duration::from_secs(5)).await;
                let expired = self.expire_leases_of(worker_id).await;
                self.check_frozen(round, worker_id).await;
                note.push_str(&format!(" expired {expired:?}"));
                self.workers[w].signal(Signal::SIGCONT);
                let rescued = stepwise::engine::rescue_expired_leases(&self.db).await;
                note.push_str(&format!(" process ended {ended}, harness rescue {rescued:?}"));
            }
            PauseHow::RescuedFirst { others_paused } => {
                let expired = self.expire_leases_of(worker_id).await;
                let rescued = self.attempt_ended(step.id, step.attempt, Duration::from_secs(10)).await;
                self.check_frozen(round, worker_id).await;
                note.push_str(&format!(" expired {expired:?}"));
                let others: Vec<usize> = if others_paused { self.live_unpaused() } else { vec![] };
                for o in &others {
                    self.pause_worker(*o);
                }
                self.workers[w].signal(Signal::SIGCONT);
                if others_paused {
                    // Until the resumed worker claimed its rescued step again
                    // (or it went elsewhere: another execution's maintenance).
                    let db = self.db.clone();
                    let reclaimed = poll(Duration::from_secs(5), || {
                        let db = db.clone();
                        async move {
                            let owner: Option<Option<Uuid>> =
                                sqlx::query_scalar("select lease_owner from step_runs where id = $1 and attempt > $2")
                                    .bind(step.id)
                                    .bind(step.attempt)
                                    .fetch_optional(&db)
                                    .await
                                    .ok()
                                    .flatten();
                            owner.flatten().filter(|o| *o == worker_id)
                        }
                    })
                    .await;
                    note.push_str(&format!(" re-claimed by the same worker: {}", reclaimed.is_some()));
                    for o in others {
                        self.workers[o].signal(Signal::SIGCONT);
                    }
                }
                note.push_str(&format!(" rescued {rescued}"));
            }
            PauseHow::NaturalExpiry => {
                let rescued = self.attempt_ended(step.id, step.attempt, Duration::from_secs(15)).await;
                self.check_frozen(round, worker_id).await;
                self.workers[w].signal(Signal::SIGCONT);
                note.push_str(&format!(" rescued {rescued}"));
            }
        }
        round.log.push(note);
        true
    }
}
