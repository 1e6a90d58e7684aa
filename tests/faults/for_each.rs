//! Backend kills inside a ForEach's expansion and conclusion, set up with
//! locks, not timing:
//!
//! - **Expansion**: the harness inserts, uncommitted, the first row the
//!   expansion will write (`F[0].<first body step>`, same execution: the
//!   unique key (execution_id, step_name)). The expansion's insert then
//!   waits on the harness's transaction; the harness terminates the backend
//!   that waits and rolls its own insert back.
//! - **Conclusion**: once the ForEach has expanded and no iteration waits
//!   for a slot, the harness holds a share lock on the ForEach's row. The
//!   transaction ending the last iteration, which ends the ForEach, then
//!   waits for it to lock that row; the harness terminates it and releases.
//!
//! Either way the service must recover (retry the transaction, or rescue
//! the step) and every invariant still hold.

use std::time::{Duration, Instant};

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{
    dag::{first_for_each, Kind},
    harness::{is_terminal, poll, Harness},
    round::Round,
};

/// How long a ForEach may take to reach the moment a kill needs (its
/// upstream steps, callbacks included, run first).
const FOR_EACH_TRIGGER_LIMIT: Duration = Duration::from_secs(20);

impl Harness {
    /// Whether it fired: a backend blocked in the expansion (or conclusion)
    /// was terminated.
    pub async fn for_each_kill(&mut self, round: &mut Round, conclusion: bool) -> bool {
        let phase = if conclusion { "conclusion" } else { "expansion" };
        let (Some(&execution), Some(spec)) = (round.executions.last(), first_for_each(&round.specs)) else {
            round.log.push(format!("foreach {phase}: no trigger (no ForEach)"));
            return false;
        };
        let Kind::ForEach { body, .. } = &spec.kind else {
            unreachable!()
        };
        let name = spec.name.clone();
        let held = if conclusion {
            self.hold_conclusion(execution, &name).await
        } else {
            self.hold_expansion(execution, &name, &format!("{name}[0].{}", body[0].name))
                .await
        };
        let Some((tx, holder)) = held else {
            round.log.push(format!("foreach {phase} of {name}: no trigger"));
            return false;
        };
        let started = Instant::now();
        let db = self.db.clone();
        let blocked = poll(FOR_EACH_TRIGGER_LIMIT, || {
            let db = db.clone();
            async move {
                let pids: Vec<i32> =
                    sqlx::query_scalar("select pid from pg_stat_activity where $1 = any(pg_blocking_pids(pid))")
                        .bind(holder)
                        .fetch_all(&db)
                        .await
                        .ok()?;
                if !pids.is_empty() {
                    return Some(Some(pids));
                }
                let done = crate::harness::execution_statuses(&db, &[execution])
                    .await
                    .get(&execution)
                    .is_some_and(|(status, _)| is_terminal(status));
                done.then_some(None)
            }
        })
        .await
        .flatten();
        let terminated = match &blocked {
            Some(pids) => {
                self.terminated_at.push(Instant::now());
                sqlx::query_scalar::<_, i64>("select count(pg_terminate_backend(pid)) from unnest($1::int4[]) pid")
                    .bind(pids)
                    .fetch_one(&self.db)
                    .await
                    .expect("terminate")
            }
            None => 0,
        };
        tx.rollback().await.expect("the harness's lock is released");
        round.log.push(format!(
            "foreach {phase} of {name} in {execution}: {} after {:.1}s",
            match &blocked {
                Some(pids) => format!("terminated {terminated} blocked backends {pids:?}"),
                None => "nothing blocked (no trigger)".into(),
            },
            started.elapsed().as_secs_f64()
        ));
        terminated > 0
    }

    /// The uncommitted row the expansion of ForEach `name` will collide
    /// with, and the holding backend's pid; `None` once it has expanded.
    async fn hold_expansion(
        &self,
        execution: Uuid,
        name: &str,
        first_row: &str,
    ) -> Option<(Transaction<'static, Postgres>, i32)> {
        let mut tx = self.db.begin().await.ok()?;
        let holder: i32 = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .ok()?;
        // A copy of the ForEach's row under the iteration's name; an error
        // (the expansion committed or is committing it) is no trigger.
        let inserted = sqlx::query(
            "insert into step_runs select (jsonb_populate_record(null::step_runs, to_jsonb(s) \
               || jsonb_build_object('id', gen_random_uuid(), 'step_name', $3::text, 'status', 'Pending', \
                    'callback_token', null, 'lease_owner', null, 'lease_expires_at', null))).* \
             from step_runs s where s.execution_id = $1 and s.step_name = $2 and not (s.metadata ? 'for_each')",
        )
        .bind(execution)
        .bind(name)
        .bind(first_row)
        .execute(&mut *tx)
        .await
        .ok()?
        .rows_affected();
        (inserted == 1).then_some((tx, holder))
    }

    /// A share lock on ForEach `name`'s row once it has expanded and no
    /// iteration waits for a slot, and the holding backend's pid.
    async fn hold_conclusion(&self, execution: Uuid, name: &str) -> Option<(Transaction<'static, Postgres>, i32)> {
        let db = self.db.clone();
        let ready = poll(FOR_EACH_TRIGGER_LIMIT, || {
            let db = db.clone();
            async move {
                let row: Option<(bool, bool)> = sqlx::query_as(
                    "select f.status in ('Executing', 'Stopping') and f.metadata ? 'for_each', \
                       f.status not in ('Pending', 'Starting', 'Executing', 'Stopping') \
                     from step_runs f where f.execution_id = $1 and f.step_name = $2 \
                       and not exists (select 1 from step_runs c where c.execution_id = $1 \
                         and c.parent = $2 and c.slot_wait and c.status = 'Pending')",
                )
                .bind(execution)
                .bind(name)
                .fetch_optional(&db)
                .await
                .ok()?;
                match row? {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                }
            }
        })
        .await;
        if ready != Some(true) {
            return None;
        }
        let mut tx = self.db.begin().await.ok()?;
        let holder: i32 = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .ok()?;
        let locked = sqlx::query(
            "select 1 from step_runs where execution_id = $1 and step_name = $2 \
               and status in ('Executing', 'Stopping') and metadata ? 'for_each' for share",
        )
        .bind(execution)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .ok()?;
        locked.map(|_| (tx, holder))
    }
}
