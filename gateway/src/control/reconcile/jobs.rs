//! Batch jobs' rules: runs that ended are counted in their job's progress,
//! the job completes or fails, and how many runs it wants now.

use std::collections::BTreeMap;

use skiff_proto::BatchSpec;
use skiff_proto::cluster::AllocationState;

use super::{Draft, PassEvent};
use crate::control::{JobState, JobStatus, State, WorkloadRecord};

/// Counts the batch runs that ended since the last pass (each once: it is
/// marked done, which takes it off its node), and settles each job that
/// is done: complete, or failed (too many failed runs, or its deadline).
/// The jobs whose progress changed.
pub(super) fn count_runs(
    s: &State,
    now: i64,
    draft: &mut Draft,
    events: &mut Vec<PassEvent>,
) -> BTreeMap<String, JobStatus> {
    let mut jobs: BTreeMap<String, JobStatus> = BTreeMap::new();
    let ended: Vec<(String, String, bool, i64)> = draft
        .all(s)
        .filter(|a| {
            a.is_live() && matches!(a.state, AllocationState::Exited | AllocationState::Failed)
        })
        .filter(|a| {
            s.workloads
                .get(&a.workload)
                .is_some_and(|w| w.spec.batch_rules().is_some())
        })
        .map(|a| {
            let ok = a.state == AllocationState::Exited && a.exit_code == Some(0);
            (a.id.clone(), a.workload.clone(), ok, a.updated_ms)
        })
        .collect();
    for (id, workload, ok, at) in ended {
        let job = jobs
            .entry(workload.clone())
            .or_insert_with(|| progress(&s.workloads[&workload]));
        if ok {
            job.succeeded += 1;
        } else {
            job.failed += 1;
            job.last_failure_ms = Some(job.last_failure_ms.map_or(at, |t| t.max(at)));
        }
        if let Some(a) = draft.edit(s, &id) {
            a.done = true;
        }
    }
    for (name, w) in &s.workloads {
        let Some(rules) = w.spec.batch_rules() else {
            continue;
        };
        let mut job = jobs.get(name).cloned().unwrap_or_else(|| progress(w));
        if job.state == JobState::Running {
            settle(&mut job, &rules, w.created_ms, now);
            if job.state != JobState::Running {
                let what = match job.state {
                    JobState::Complete => format!(
                        "job complete: {} of {} runs succeeded",
                        job.succeeded, rules.completions
                    ),
                    _ => format!("job failed: {}", job.message),
                };
                events.push(("workload", name.clone(), what));
            }
        }
        if w.job.as_ref() != Some(&job) {
            jobs.insert(name.clone(), job);
        } else {
            jobs.remove(name);
        }
    }
    jobs
}

/// A job's progress as stored (a job stored without it has none yet).
fn progress(w: &WorkloadRecord) -> JobStatus {
    w.job.clone().unwrap_or_default()
}

/// Completes or fails a running job whose counts or deadline say so.
fn settle(job: &mut JobStatus, rules: &BatchSpec, created_ms: i64, now: i64) {
    let failed_why = if job.succeeded >= rules.completions {
        None
    } else if job.failed > rules.backoff_limit {
        Some(format!(
            "{} runs failed, more than batch.backoff_limit ({})",
            job.failed, rules.backoff_limit
        ))
    } else if let Some(d) = rules
        .deadline
        .filter(|d| now >= created_ms.saturating_add(d.as_millis() as i64))
    {
        Some(format!(
            "its deadline ({d}) passed with {} of {} runs succeeded",
            job.succeeded, rules.completions
        ))
    } else {
        return;
    };
    job.finished_ms = Some(now);
    match failed_why {
        None => job.state = JobState::Complete,
        Some(why) => {
            job.state = JobState::Failed;
            job.message = why;
        }
    }
}

/// How many runs a job wants live now (`live` of them are), given its
/// progress: up to `parallelism`, never more than the completions still
/// missing, none once it is over. New runs wait out the back-off after a
/// failure: `(wanted, may_add)`.
pub(super) fn runs_wanted(rules: &BatchSpec, job: &JobStatus, now: i64) -> (usize, bool) {
    if job.state != JobState::Running {
        return (0, false);
    }
    let missing = rules.completions.saturating_sub(job.succeeded);
    let wanted = rules.parallelism.min(missing) as usize;
    let ready_at = job.last_failure_ms.map_or(i64::MIN, |t| {
        t.saturating_add(rules.backoff_after(job.failed).as_millis() as i64)
    });
    (wanted, now >= ready_at)
}

/// Why a job's live run is stopped.
pub(super) fn why_stopped(job: &JobStatus) -> &'static str {
    match job.state {
        JobState::Complete => "job complete",
        JobState::Failed => "job failed",
        JobState::Running => "more runs than the job wants",
    }
}
