//! The invariants, checked after a round (from the database and the
//! side-effect files) and after the run (API answers, left processes).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use uuid::Uuid;

use crate::{
    dag::{v_path, Kind},
    effects::{alive_with, read_effects, Effects, Start},
    harness::{attempt_rows, execution_statuses, is_terminal, step_rows, AttemptRow, Harness, StepRow},
    round::Round,
    BACKGROUND_SLEEP,
};

/// Every invariant, from the database and the side-effect files.
pub async fn check_round(h: &mut Harness, round: &Round) {
    let rows = step_rows(&h.db, &round.executions).await;
    let attempts = attempt_rows(&h.db, &round.executions).await;
    let statuses = execution_statuses(&h.db, &round.executions).await;
    let effects = read_effects(&round.dir);
    let by_key: HashMap<(Uuid, String), &StepRow> = rows
        .iter()
        .map(|r| ((r.execution_id, r.step_name.clone()), r))
        .collect();
    let mut attempts_of: HashMap<Uuid, Vec<&AttemptRow>> = HashMap::new();
    for a in &attempts {
        attempts_of.entry(a.step_run_id).or_default().push(a);
    }
    let seen = Seen {
        round,
        effects: &effects,
        by_key: &by_key,
        attempts_of: &attempts_of,
    };
    let mut violations = Vec::new();
    for row in &rows {
        let (execution_status, _) = statuses.get(&row.execution_id).cloned().unwrap_or_default();
        seen.check_row(row, &execution_status, &mut violations);
    }
    check_escapes(h, &rows, &attempts, &effects, &mut violations);
    check_answers(round, &attempts, &mut violations);
    for v in violations {
        round.violation(h, v);
    }
}

/// What a round left, for the per-step checks.
struct Seen<'a> {
    round: &'a Round,
    effects: &'a Effects,
    by_key: &'a HashMap<(Uuid, String), &'a StepRow>,
    attempts_of: &'a HashMap<Uuid, Vec<&'a AttemptRow>>,
}

impl Seen<'_> {
    fn check_row(&self, row: &StepRow, execution_status: &str, violations: &mut Vec<String>) {
        let label = format!("execution {} step {}", row.execution_id, row.step_name);
        let own = self.attempts_of.get(&row.id).cloned().unwrap_or_default();
        let succeeded: Vec<&&AttemptRow> = own.iter().filter(|a| a.status == "Succeeded").collect();
        check_history(&label, row, &own, &succeeded, execution_status, violations);
        let starts = self
            .effects
            .starts
            .get(&(row.execution_id, row.step_name.clone()))
            .cloned()
            .unwrap_or_default();
        self.check_starts(&label, row, &own, &succeeded, &starts, violations);
        self.check_dependencies(&label, row, &starts, violations);
        // A Callback's committed value is the one reported for its attempt.
        if matches!(
            self.round.all.get(&row.step_name).map(|s| &s.kind),
            Some(Kind::Callback { .. })
        ) && row.status == "Succeeded"
        {
            let v = row
                .properties
                .as_ref()
                .and_then(|p| p["OutputParameters"]["v"].as_str())
                .unwrap_or("");
            if v != format!("{}-{}", row.step_name, row.attempt) {
                violations.push(format!(
                    "Fenced: {label} Succeeded at attempt {} with OutputParameters.v={v:?}",
                    row.attempt
                ));
            }
        }
    }

    /// History (side effects) and Order of the runs the step's files record.
    fn check_starts(
        &self,
        label: &str,
        row: &StepRow,
        own: &[&AttemptRow],
        succeeded: &[&&AttemptRow],
        starts: &[Start],
        violations: &mut Vec<String>,
    ) {
        let spec = self.round.all.get(&row.step_name);
        let effects = self.effects;
        // History (side effects): an attempt number starts at most once, and
        // every start is a recorded attempt that ended.
        let mut seen = BTreeSet::new();
        for s in starts {
            if !seen.insert(s.attempt) {
                violations.push(format!(
                    "History: {label} attempt {} started twice (number reused)",
                    s.attempt
                ));
            }
            match own.iter().find(|a| a.attempt == s.attempt) {
                None => violations.push(format!(
                    "History: {label} attempt {} ran (pid {}) but is not recorded",
                    s.attempt, s.pid
                )),
                Some(a) if (a.started_at_us as i128) * 1000 > s.at_ns => violations.push(format!(
                    "History: {label} attempt {} ran (pid {}) {:.3}s before the attempt was recorded as started",
                    s.attempt,
                    s.pid,
                    ((a.started_at_us as i128) * 1000 - s.at_ns) as f64 / 1e9
                )),
                Some(_) => {}
            }
        }
        // Order: a step that committed Succeeded never runs again.
        if let Some(first) = succeeded.first() {
            for s in starts.iter().filter(|s| s.attempt > first.attempt) {
                violations.push(format!(
                    "Order: {label} ran attempt {} (pid {}) after attempt {} committed Succeeded",
                    s.attempt, s.pid, first.attempt
                ));
            }
            // A succeeded Command step's outputs are those of the attempt
            // that succeeded, written by a process that ran it to the end.
            if matches!(spec.map(|s| &s.kind), Some(Kind::Command { .. })) && row.status == "Succeeded" {
                let v = row
                    .properties
                    .as_ref()
                    .and_then(|p| p["Outputs"]["v"].as_str())
                    .unwrap_or("")
                    .to_string();
                let ran_ok: Vec<String> = starts
                    .iter()
                    .filter(|s| s.attempt == first.attempt)
                    .filter(|s| {
                        effects
                            .ends
                            .get(&(row.execution_id, row.step_name.clone(), s.attempt))
                            .is_some_and(|e| e.1)
                    })
                    .map(|s| format!("{}-{}-{}", row.step_name, s.attempt, s.pid))
                    .collect();
                if !ran_ok.contains(&v) {
                    violations.push(format!(
                        "Order: {label} Succeeded in attempt {} with outputs v={v:?}, but the runs of that attempt \
                     that ended well wrote {ran_ok:?}",
                        first.attempt
                    ));
                }
            }
        }
    }

    /// Order: each start comes after every dependency committed Succeeded
    /// (its attempt's end in the database) and reads that commit's value.
    fn check_dependencies(&self, label: &str, row: &StepRow, starts: &[Start], violations: &mut Vec<String>) {
        let (by_key, attempts_of, round) = (self.by_key, self.attempts_of, self.round);
        for s in starts {
            for dep in &row.dependencies {
                let Some(d) = by_key.get(&(row.execution_id, dep.clone())) else {
                    continue; // a reused step (not in step_runs): none here
                };
                let d_attempts = attempts_of.get(&d.id).cloned().unwrap_or_default();
                let d_success = d_attempts.iter().find(|a| a.status == "Succeeded");
                match d_success.and_then(|a| a.ended_at_us) {
                    None => violations.push(format!(
                        "Order: {label} attempt {} started (pid {}) but its dependency {dep} never succeeded ({})",
                        s.attempt, s.pid, d.status
                    )),
                    Some(ended_us) if (ended_us as i128) * 1000 > s.at_ns => violations.push(format!(
                        "Order: {label} attempt {} started {:.3}s before its dependency {dep} committed Succeeded",
                        s.attempt,
                        ((ended_us as i128) * 1000 - s.at_ns) as f64 / 1e9
                    )),
                    Some(_) => {}
                }
                if let Some(value) = s.inputs.get(dep) {
                    let path = round.all.get(dep).and_then(|sp| v_path(&sp.kind)).unwrap_or("Outputs");
                    let committed = d.properties.as_ref().and_then(|p| p[path]["v"].as_str()).unwrap_or("");
                    if value != committed {
                        violations.push(format!(
                            "Order: {label} attempt {} read {dep}'s v={value:?} but {dep} committed v={committed:?}",
                            s.attempt
                        ));
                    }
                }
            }
        }
    }
}

/// Termination and History of a step from its row and attempt rows.
fn check_history(
    label: &str,
    row: &StepRow,
    own: &[&AttemptRow],
    succeeded: &[&&AttemptRow],
    execution_status: &str,
    violations: &mut Vec<String>,
) {
    // Termination: an ended execution has no unfinished step.
    if is_terminal(execution_status) && matches!(row.status.as_str(), "Pending" | "Starting" | "Executing" | "Stopping")
    {
        violations.push(format!(
            "Termination: {label} is {} in a {execution_status} execution",
            row.status
        ));
    }
    // History: attempts 1..n, n = the step's attempt; each ended.
    let numbers: Vec<i32> = own.iter().map(|a| a.attempt).collect();
    let expected: Vec<i32> = (1..=row.attempt).collect();
    if numbers != expected {
        violations.push(format!(
            "History: {label} has attempts {numbers:?}, expected {expected:?} (step attempt {})",
            row.attempt
        ));
    }
    for a in own {
        if a.ended_at_us.is_none() && is_terminal(execution_status) {
            violations.push(format!(
                "History: {label} attempt {} ({}) has no end",
                a.attempt, a.status
            ));
        }
    }
    if succeeded.len() > 1 {
        violations.push(format!(
            "Order: {label} committed Succeeded in attempts {:?} (ran again after succeeding)",
            succeeded.iter().map(|a| a.attempt).collect::<Vec<_>>()
        ));
    }
    if let Some(first) = succeeded.first() {
        if first.attempt != row.attempt || row.status != "Succeeded" {
            violations.push(format!(
                "Order: {label} succeeded in attempt {} but is now {} at attempt {} (attempts: {})",
                first.attempt,
                row.status,
                row.attempt,
                own.iter()
                    .map(|a| format!(
                        "{}:{}:{}",
                        a.attempt,
                        a.status,
                        a.error_type.clone().unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
    }
    if row.status == "Succeeded" && succeeded.is_empty() {
        violations.push(format!(
            "History: {label} is Succeeded but no attempt is (attempts {:?})",
            own.iter().map(|a| (a.attempt, a.status.clone())).collect::<Vec<_>>()
        ));
    }
}

/// No escaping processes: a process whose attempt ended without success
/// (rescued, stopped, failed) does not run on past that end, unless its
/// worker was frozen by the harness.
fn check_escapes(
    h: &Harness,
    rows: &[StepRow],
    attempts: &[AttemptRow],
    effects: &Effects,
    violations: &mut Vec<String>,
) {
    for a in attempts {
        if a.status == "Succeeded" || a.worker_id.is_some_and(|w| h.ever_paused.contains(&w)) {
            continue;
        }
        let (Some(ended_us), Some(row)) = (a.ended_at_us, rows.iter().find(|r| r.id == a.step_run_id)) else {
            continue;
        };
        let ended_ns = ended_us as i128 * 1000;
        if let Some((at, ok)) = effects.ends.get(&(row.execution_id, row.step_name.clone(), a.attempt)) {
            if *at > ended_ns + 1_500_000_000 {
                violations.push(format!(
                    "No escaping processes: execution {} step {} attempt {} ended {} ({}) but its process ran on \
                     and ended ({}) {:.2}s later",
                    row.execution_id,
                    row.step_name,
                    a.attempt,
                    a.status,
                    a.error_type.clone().unwrap_or_default(),
                    if *ok { "ok" } else { "fail" },
                    (*at - ended_ns) as f64 / 1e9
                ));
            }
        }
    }
}

/// Fenced: a 200 callback report took effect; concurrent reports of one
/// token cannot both win.
fn check_answers(round: &Round, attempts: &[AttemptRow], violations: &mut Vec<String>) {
    let answers = round.shared.lock().unwrap().answers.clone();
    let mut wins: HashMap<(Uuid, i32), Vec<String>> = HashMap::new();
    for a in &answers {
        // 503 is judged with every other call in `check_calls`.
        if !matches!(a.status, 200 | 404 | 409 | 503) {
            violations.push(format!("Fenced: callback {} answered {}", a.what, a.status));
        }
        if a.status != 200 {
            continue;
        }
        wins.entry((a.step_run, a.attempt)).or_default().push(a.what.clone());
        let recorded = attempts
            .iter()
            .find(|r| r.step_run_id == a.step_run && r.attempt == a.attempt);
        let expected = if a.success { "Succeeded" } else { "Failed" };
        match recorded {
            Some(r) if r.status == expected => {}
            other => violations.push(format!(
                "Fenced: callback {} answered 200 but the attempt ended {:?} ({:?})",
                a.what,
                other.map(|r| r.status.clone()),
                other.and_then(|r| r.error_type.clone())
            )),
        }
    }
    // Reports are idempotent (issue 20 item 9): the same report sent again
    // after it was recorded answers 200 too. Two different reports of one
    // attempt (a success and a failure, or different outputs) cannot both win.
    for ((_, _), what) in wins.iter_mut() {
        what.sort();
        what.dedup();
    }
    for ((_, _), what) in wins.iter().filter(|(_, w)| w.len() > 1) {
        violations.push(format!(
            "Fenced: one callback attempt accepted {} different reports: {what:?}",
            what.len()
        ));
    }
}

/// API answers: never a 5xx (503 right after a backend termination is noted,
/// not failed), never no answer.
pub fn check_calls(h: &mut Harness, seeds: &HashMap<usize, u64>) {
    let calls = h.api.calls.lock().unwrap().clone();
    for c in calls {
        if c.status >= 500 || c.status == 0 {
            let near_terminate = h
                .terminated_at
                .iter()
                .any(|t| c.at >= *t && c.at.duration_since(*t) < Duration::from_secs(5));
            let line = format!(
                "round {} (seed {}): Fenced: {} answered {}: {}",
                c.round,
                seeds.get(&c.round).copied().unwrap_or(0),
                c.what,
                c.status,
                c.body
            );
            if c.status == 503 && near_terminate {
                h.notes.push(line);
            } else {
                h.violations.push(line);
            }
        }
    }
}

/// No process a step started is alive: step shells and their background
/// children, given a moment to be reaped.
pub async fn check_processes(h: &mut Harness, seeds: &HashMap<usize, u64>) {
    let mut suspects = Vec::new();
    for (index, dir) in h.effect_dirs.iter().enumerate() {
        let effects = read_effects(dir);
        let marker = dir.display().to_string();
        for starts in effects.starts.values() {
            for s in starts {
                suspects.push((
                    index,
                    format!("step {} attempt {} shell", s.step, s.attempt),
                    s.pid,
                    marker.clone(),
                ));
            }
        }
        for (execution, step, attempt, pid) in &effects.background {
            suspects.push((
                index,
                format!("background child of execution {execution} step {step} attempt {attempt}"),
                *pid,
                format!("sleep {BACKGROUND_SLEEP}"),
            ));
        }
    }
    let alive = |suspects: &Vec<(usize, String, i32, String)>| -> Vec<(usize, String, i32, String)> {
        suspects
            .iter()
            .filter(|(_, _, pid, marker)| alive_with(*pid, marker))
            .cloned()
            .collect()
    };
    let mut left = alive(&suspects);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = alive(&left);
    }
    // Grouped per round: one line per kind, with a count and examples.
    let mut grouped: BTreeMap<(usize, bool), Vec<String>> = BTreeMap::new();
    for (round, what, pid, _) in &left {
        grouped
            .entry((*round, what.starts_with("background")))
            .or_default()
            .push(format!("{what} (pid {pid})"));
    }
    for ((round, background), list) in grouped {
        h.violations.push(format!(
            "round {round} (seed {}): No escaping processes: {} {} still alive after the run, e.g. {}",
            seeds.get(&round).copied().unwrap_or(0),
            list.len(),
            if background {
                "background children"
            } else {
                "step shells"
            },
            list.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    // Leave nothing behind either way.
    for (_, _, pid, _) in left {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
