//! The racers: callback reports (the round's answerer and the races set
//! up on a waiting callback), stops racing callbacks, and retries racing
//! each other and a stop.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    harness::{poll, step_rows, Api, Harness, StepRow},
    inject::CallbackRace,
    round::Round,
    TRIGGER_LIMIT,
};

/// A callback answer the harness sent: token, attempt, what, HTTP status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub step_run: Uuid,
    pub attempt: i32,
    pub success: bool,
    pub status: u16,
    pub what: String,
}

/// State of one round shared with its callback answerer.
#[derive(Default)]
pub struct RoundShared {
    /// Callback step names the answerer leaves alone (a race is set up on them).
    /// Counted: one per race still to come on that step.
    pub reserved: HashMap<String, usize>,
    /// Tokens already answered by the answerer.
    pub answered: HashSet<Uuid>,
    pub answers: Vec<Answer>,
}

impl RoundShared {
    pub fn unreserve(&mut self, step: &str) {
        if let Some(count) = self.reserved.get_mut(step) {
            *count -= 1;
            if *count == 0 {
                self.reserved.remove(step);
            }
        }
    }
}

pub async fn report_callback(api: &Api, shared: &Mutex<RoundShared>, row: &StepRow, success: bool) -> u16 {
    let token = row.callback_token.expect("a waiting callback has a token");
    let (what, body) = if success {
        (
            "success",
            json!({"output_parameters": {"v": format!("{}-{}", row.step_name, row.attempt)}}),
        )
    } else {
        (
            "failure",
            json!({"failure_reason": format!("{} rejected", row.step_name)}),
        )
    };
    let (status, _) = api.post(&format!("/v1/callbacks/{token}/{what}"), &body).await;
    let mut shared = shared.lock().unwrap();
    // A 503 (the database just cut off) took no effect: answer again, as a
    // client is told to.
    if status != 503 {
        shared.answered.insert(token);
    }
    shared.answers.push(Answer {
        step_run: row.id,
        attempt: row.attempt,
        success,
        status,
        what: format!("{what} for {} attempt {}", row.step_name, row.attempt),
    });
    status
}

/// Answers every waiting callback of the round that is not reserved: failure
/// on attempt 1 of a step that fails first, success otherwise.
pub async fn answer_callbacks(
    api: Arc<Api>,
    db: PgPool,
    shared: Arc<Mutex<RoundShared>>,
    executions: Arc<Mutex<Vec<Uuid>>>,
    fail_first: HashSet<String>,
    stop: tokio_util::sync::CancellationToken,
) {
    while !stop.is_cancelled() {
        let ids = executions.lock().unwrap().clone();
        let rows = step_rows(&db, &ids).await;
        for row in rows {
            if row.step_type != "Callback" || row.status != "Executing" {
                continue;
            }
            let Some(token) = row.callback_token else { continue };
            {
                let shared = shared.lock().unwrap();
                if shared.reserved.contains_key(&row.step_name) || shared.answered.contains(&token) {
                    continue;
                }
            }
            let success = !(row.attempt == 1 && fail_first.contains(&row.step_name));
            report_callback(&api, &shared, &row, success).await;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

impl Harness {
    /// Reports a callback for `row`'s token; records the answer.
    pub async fn report_callback(&self, round: &Round, row: &StepRow, success: bool) -> u16 {
        report_callback(&self.api, &round.shared, row, success).await
    }

    /// Concurrent stops of the newest execution, with a callback report of
    /// one of its waiting callbacks when there is one.
    /// Whether it fired.
    pub async fn stop_race(&mut self, round: &mut Round, twice: bool) -> bool {
        let Some(&execution) = round.executions.last() else {
            return false;
        };
        // Trigger: a step of it is running or waiting.
        let db = self.db.clone();
        let waiting = poll(TRIGGER_LIMIT, || {
            let db = db.clone();
            async move {
                let rows = step_rows(&db, &[execution]).await;
                rows.iter().any(|s| s.status == "Executing").then_some(rows)
            }
        })
        .await;
        let Some(rows) = waiting else {
            round.log.push("stop: no trigger".into());
            return false;
        };
        let callback = rows
            .into_iter()
            .find(|s| s.status == "Executing" && s.callback_token.is_some() && s.step_type == "Callback");
        let reserved = round.shared.lock().unwrap().reserved.clone();
        let callback = callback.filter(|s| !reserved.contains_key(&s.step_name));
        let stop_path = format!("/v1/executions/{execution}/stop");
        let api = self.api.clone();
        let empty = json!({});
        let stops = async {
            let first = api.post(&stop_path, &empty);
            if twice {
                let (a, b) = tokio::join!(first, api.post(&stop_path, &empty));
                vec![a.0, b.0]
            } else {
                vec![first.await.0]
            }
        };
        let report = async {
            match &callback {
                Some(s) => Some(self.report_callback(round, s, true).await),
                None => None,
            }
        };
        let (stops, report) = tokio::join!(stops, report);
        if stops.contains(&200) {
            round.expect_stopped.insert(execution);
        }
        round.log.push(format!("stop: {stops:?} callback {report:?}"));
        true
    }

    /// A success report of a waiting callback raced against `race`.
    /// Whether it fired.
    pub async fn callback_race(&mut self, round: &mut Round, step: String, race: CallbackRace) -> bool {
        let db = self.db.clone();
        let executions = round.executions.clone();
        let name = step.clone();
        let waiting = poll(TRIGGER_LIMIT, || {
            let db = db.clone();
            let executions = executions.clone();
            let name = name.clone();
            async move {
                step_rows(&db, &executions)
                    .await
                    .into_iter()
                    .find(|s| s.step_name == name && s.status == "Executing" && s.callback_token.is_some())
            }
        })
        .await;
        let Some(row) = waiting else {
            round.log.push(format!("callback race on {step}: no trigger"));
            round.shared.lock().unwrap().unreserve(&step);
            return false;
        };
        let success = self.report_callback(round, &row, true);
        let other = async {
            match race {
                CallbackRace::Failure => {
                    format!("{:?}", self.report_callback(round, &row, false).await)
                }
                CallbackRace::Twice => format!("{:?}", self.report_callback(round, &row, true).await),
                CallbackRace::Stop => {
                    let (status, _) = self
                        .api
                        .post(&format!("/v1/executions/{}/stop", row.execution_id), &json!({}))
                        .await;
                    format!("stop {status}")
                }
                CallbackRace::Timeout => {
                    sqlx::query(
                        "update step_runs set callback_deadline = now() - interval '1 second' \
                         where id = $1 and attempt = $2",
                    )
                    .bind(row.id)
                    .bind(row.attempt)
                    .execute(&self.db)
                    .await
                    .expect("deadline set");
                    match stepwise::engine::expire_callbacks(&self.db).await {
                        Ok(n) => format!("timeout handler expired {n}"),
                        Err(e) => format!("timeout handler error {e}"),
                    }
                }
            }
        };
        let (success, other) = tokio::join!(success, other);
        if matches!(race, CallbackRace::Stop) && other == "stop 200" {
            round.expect_stopped.insert(row.execution_id);
        }
        round.shared.lock().unwrap().unreserve(&step);
        round
            .log
            .push(format!("callback race {race:?} on {step}: success {success} / {other}"));
        true
    }

    /// Two concurrent retries of an ended execution, with a stop when the
    /// round planned one: at most one retry may win. Whether one did.
    pub async fn retry_race(&mut self, round: &mut Round, id: Uuid, status: &str, by_fail_step: bool) -> bool {
        let h = self;
        let path = format!("/v1/executions/{id}/retry");
        let empty = json!({});
        let stop_path = format!("/v1/executions/{id}/stop");
        let with_stop = round.retry_with_stop.remove(&id);
        let stop = async {
            if with_stop {
                Some(h.api.post(&stop_path, &empty).await.0)
            } else {
                None
            }
        };
        let (a, b, stop) = tokio::join!(h.api.post(&path, &empty), h.api.post(&path, &empty), stop);
        let wins = [a.0, b.0].iter().filter(|s| **s == 200).count();
        // A stop can only win after a retry did; with one retry won,
        // the stop came after it and the execution must end Stopped.
        // With two, the stop may have come between them: legitimate.
        if stop == Some(200) && wins == 1 {
            round.expect_stopped.insert(id);
        }
        if stop == Some(200) && wins == 0 {
            round.violation(
                h,
                format!("execution {id}: a stop of a {status} execution answered 200"),
            );
        }
        if stop.is_some_and(|s| !matches!(s, 200 | 409)) {
            round.violation(h, format!("execution {id}: a stop racing a retry answered {stop:?}"));
        }
        round.log.push(format!(
            "retry {id} ({status}, by Fail step {by_fail_step}): {} {}{}",
            a.0,
            b.0,
            stop.map(|s| format!(", racing stop {s}")).unwrap_or_default()
        ));
        if wins > 1 && stop != Some(200) {
            round.violation(h, format!("execution {id}: two concurrent retries both answered 200"));
        }
        if by_fail_step && wins > 0 {
            round.violation(
                h,
                format!("execution {id}: retry of a run failed by a Fail step answered 200"),
            );
        }
        if wins == 0 && !by_fail_step {
            round.violation(
                h,
                format!(
                    "execution {id}: retry of a {status} execution refused twice: {} {}",
                    a.0, b.0
                ),
            );
        }
        wins > 0
    }
}
