//! One round: its pipeline, its executions with a fault applied during
//! each, then driving every execution to its end before the checks.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    checks::check_round,
    dag::{all_specs, definition, describe, generate_dag, Kind, Rng, Spec},
    harness::{execution_statuses, is_terminal, step_rows, Harness},
    inject::generate_faults,
    inject::{forced_kinds, needs_of},
    races::{answer_callbacks, RoundShared},
    TERMINATION_LIMIT,
};

pub struct Round {
    pub index: usize,
    pub seed: u64,
    pub specs: Vec<Spec>,
    pub all: BTreeMap<String, Spec>,
    pub pipeline: String,
    pub dir: PathBuf,
    pub executions: Vec<Uuid>,
    /// Executions a stop answered 200 for, not retried since.
    pub expect_stopped: HashSet<Uuid>,
    pub retries_left: HashMap<Uuid, usize>,
    /// Executions whose retries race a stop.
    pub retry_with_stop: HashSet<Uuid>,
    pub shared: Arc<Mutex<RoundShared>>,
    pub log: Vec<String>,
}

impl Round {
    pub fn violation(&self, h: &mut Harness, what: String) {
        h.violations
            .push(format!("round {} (seed {}): {what}", self.index, self.seed));
    }
}

/// The callback answerer of a round: its task, the executions it answers
/// for, and the token that stops it.
struct Answerer {
    task: JoinHandle<()>,
    executions: Arc<Mutex<Vec<Uuid>>>,
    stop: CancellationToken,
}

/// Runs a round: create its pipeline, start an execution before each fault
/// and apply the fault, heal, drive every execution to its end, check.
pub async fn run_round(h: &mut Harness, index: usize, seed: u64, root: &Path) {
    let started = Instant::now();
    h.api.round.store(index, std::sync::atomic::Ordering::SeqCst);
    let mut rng = Rng(seed);
    // Two kinds of fault chosen by the seed, so that every kind is planned
    // within a run; the pipeline gets what they need (a Callback, a ForEach).
    let forced = forced_kinds(seed);
    let specs = generate_dag(&mut rng, needs_of(&forced));
    let faults = generate_faults(&mut rng, &specs, &forced);
    let retry_races: Vec<bool> = faults.iter().map(|_| rng.chance(30)).collect();
    let mut round = new_round(h, index, seed, root, specs);
    create_pipeline(h, &round).await;
    eprintln!(
        "round {index} seed {seed}: {}\n  faults {faults:?}",
        describe(&round.specs)
    );

    for fault in &faults {
        if let crate::inject::Fault::Callback { step, .. } = fault {
            *round.shared.lock().unwrap().reserved.entry(step.clone()).or_default() += 1;
        }
    }
    let answerer = start_answerer(h, &round);

    for (fault, retry_race) in faults.iter().zip(retry_races) {
        h.start_execution(&mut round).await;
        if retry_race {
            round.retry_with_stop.extend(round.executions.last().copied());
        }
        *answerer.executions.lock().unwrap() = round.executions.clone();
        h.apply(&mut round, fault).await;
    }
    round.shared.lock().unwrap().reserved.clear();
    for exit in h.heal().await {
        round.violation(h, format!("a process crashed: {exit}"));
    }

    drive(h, &mut round).await;
    answerer.stop.cancel();
    let _ = answerer.task.await;

    check_round(h, &round).await;
    // Every execution and its steps can be read back (a 5xx is reported by check_calls).
    for id in &round.executions {
        h.api.get(&format!("/v1/executions/{id}")).await;
        h.api.get(&format!("/v1/executions/{id}/steps")).await;
    }
    let statuses = execution_statuses(&h.db, &round.executions).await;
    let outcome: Vec<String> = round
        .executions
        .iter()
        .map(|id| statuses.get(id).map(|s| s.0.clone()).unwrap_or_default())
        .collect();
    eprintln!(
        "round {index} seed {seed}: {:.1}s, executions {outcome:?}\n  {}",
        started.elapsed().as_secs_f64(),
        round.log.join("\n  ")
    );
}

fn new_round(h: &mut Harness, index: usize, seed: u64, root: &Path, specs: Vec<Spec>) -> Round {
    let dir = root.join(format!("round{index}"));
    std::fs::create_dir_all(&dir).unwrap();
    h.effect_dirs.push(dir.clone());
    let all = all_specs(&specs);
    Round {
        index,
        seed,
        pipeline: format!("faults-{index}"),
        all,
        specs,
        dir,
        executions: vec![],
        expect_stopped: HashSet::new(),
        retries_left: HashMap::new(),
        retry_with_stop: HashSet::new(),
        shared: Default::default(),
        log: vec![],
    }
}

async fn create_pipeline(h: &Harness, round: &Round) {
    let definition = definition(&round.specs, &round.dir);
    let (status, body) = h
        .api
        .post(
            "/v1/pipelines",
            &json!({"name": round.pipeline, "definition": definition}),
        )
        .await;
    assert_eq!(
        status, 201,
        "round {} (seed {}): pipeline rejected: {body}\n{definition:#}",
        round.index, round.seed
    );
}

fn start_answerer(h: &Harness, round: &Round) -> Answerer {
    let fail_first: HashSet<String> = round
        .all
        .values()
        .filter(|s| matches!(s.kind, Kind::Callback { fail_first: true }))
        .map(|s| s.name.clone())
        .collect();
    let executions = Arc::new(Mutex::new(Vec::<Uuid>::new()));
    let stop = CancellationToken::new();
    let task = tokio::spawn(answer_callbacks(
        h.api.clone(),
        h.db.clone(),
        round.shared.clone(),
        executions.clone(),
        fail_first,
        stop.clone(),
    ));
    Answerer { task, executions, stop }
}

/// Drive: answer callbacks (the answerer), retry what failed or stopped
/// (two concurrent retries: at most one may win), until all ended.
async fn drive(h: &mut Harness, round: &mut Round) {
    let deadline = Instant::now() + TERMINATION_LIMIT;
    let mut first_terminal: HashMap<Uuid, String> = HashMap::new();
    loop {
        let statuses = execution_statuses(&h.db, &round.executions).await;
        let mut all_done = true;
        for id in round.executions.clone() {
            let (status, by_fail_step) = statuses.get(&id).cloned().unwrap_or_default();
            if !is_terminal(&status) {
                all_done = false;
                continue;
            }
            first_terminal.entry(id).or_insert_with(|| status.clone());
            if round.expect_stopped.remove(&id) && status != "Stopped" {
                round.violation(
                    h,
                    format!("execution {id}: a stop was answered 200 but the execution ended {status}"),
                );
            }
            let left = round.retries_left.get(&id).copied().unwrap_or(0);
            if status != "Succeeded" && left > 0 {
                round.retries_left.insert(id, left - 1);
                if h.retry_race(round, id, &status, by_fail_step).await {
                    first_terminal.remove(&id);
                    all_done = false;
                }
            }
        }
        if all_done {
            break;
        }
        if Instant::now() > deadline {
            report_unfinished(h, round, &statuses).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Termination violation for each execution that has not ended, with what
/// its unfinished steps look like.
async fn report_unfinished(h: &mut Harness, round: &Round, statuses: &HashMap<Uuid, (String, bool)>) {
    let rows = step_rows(&h.db, &round.executions).await;
    for id in &round.executions {
        let (status, _) = statuses.get(id).cloned().unwrap_or_default();
        if is_terminal(&status) {
            continue;
        }
        let steps: Vec<String> = rows
            .iter()
            .filter(|s| s.execution_id == *id)
            .map(|s| format!("{}={}#{}", s.step_name, s.status, s.attempt))
            .collect();
        // What the unfinished steps look like, for the report.
        let detail: Vec<String> = sqlx::query_scalar(
            "select row_to_json(x)::text from (select s.step_name, s.status, s.attempt, s.lease_owner, \
               s.lease_expires_at - now() as lease_left, s.callback_token, s.available_at - now() as due_in, \
               (select json_agg(a.*) from (select attempt, status, error_type, failure_reason, worker_id, \
                  started_at, ended_at from step_attempts where step_run_id = s.id) a) as attempts \
             from step_runs s where s.execution_id = $1 \
               and s.status in ('Pending', 'Starting', 'Executing', 'Stopping')) x",
        )
        .bind(id)
        .fetch_all(&h.db)
        .await
        .unwrap_or_default();
        round.violation(
            h,
            format!(
                "Termination: execution {id} still {status} {}s after the faults stopped; steps {}; \
                 unfinished: {}",
                TERMINATION_LIMIT.as_secs(),
                steps.join(" "),
                detail.join(" ")
            ),
        );
    }
}
