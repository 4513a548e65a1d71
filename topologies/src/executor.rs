//! What runs a ticket's task for `worker-agents`: the [`Executor`] trait, a
//! [`SimulatedExecutor`] (the default) and a [`ShellExecutor`] that runs a configured
//! command per task type.
//!
//! An executor runs one attempt; the worker adds the timeout, the retries and the
//! backoff around it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::tickets::{ExecutionTicket, TaskType};

/// What a successful attempt produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecutionOutput {
    /// Named outputs, copied to `result.output`.
    pub output: HashMap<String, String>,
    /// Log lines, copied to `result.logs`.
    pub logs: Vec<String>,
}

/// One attempt's future.
pub type Attempt = Pin<Box<dyn Future<Output = Result<ExecutionOutput, String>> + Send>>;

/// Runs a ticket's task, one attempt at a time (`attempt` counts from 0). A failure is
/// an error message; the worker retries it while the ticket's retry budget lasts.
pub trait Executor: Send + Sync + 'static {
    /// Starts one attempt. The future is dropped (and must stop) when it times out.
    fn execute(&self, ticket: &ExecutionTicket, attempt: u32) -> Attempt;

    /// Name for logs and `result.metadata.executor`.
    fn name(&self) -> &'static str;
}

/// Pretends to run the task: waits the ticket's `estimated_duration_ms` (scaled by
/// `time_scale`; 1 s when absent), then succeeds, unless the ticket's
/// `parameters.simulate` is `fail` (every attempt fails) or a pseudo-random draw, the same
/// for the same ticket and attempt, falls under `failure_rate`.
#[derive(Clone, Debug)]
pub struct SimulatedExecutor {
    /// Chance that an attempt fails, 0 to 1.
    pub failure_rate: f64,
    /// Multiplies the simulated duration (0.01 runs a 500 ms task in 5 ms).
    pub time_scale: f64,
}

impl Default for SimulatedExecutor {
    fn default() -> Self {
        SimulatedExecutor {
            failure_rate: 0.0,
            time_scale: 1.0,
        }
    }
}

/// A number in `[0, 1)` fixed by the ticket id and the attempt (FNV-1a, then a mix).
fn draw(ticket_id: &str, attempt: u32) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ticket_id.bytes().chain(attempt.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl Executor for SimulatedExecutor {
    fn execute(&self, ticket: &ExecutionTicket, attempt: u32) -> Attempt {
        let ms = ticket.estimated_duration_ms.unwrap_or(1000).max(0) as f64 * self.time_scale;
        let duration = Duration::from_micros((ms * 1000.0) as u64);
        let forced = ticket.parameters.get("simulate").map(String::as_str) == Some("fail");
        let unlucky = draw(&ticket.ticket_id, attempt) < self.failure_rate;
        let task = format!("{:?} {}", ticket.task_type, ticket.task_id);
        Box::pin(async move {
            tokio::time::sleep(duration).await;
            if forced {
                Err(format!(
                    "simulated failure of {task} (parameters.simulate = fail)"
                ))
            } else if unlucky {
                Err(format!("simulated transient failure of {task}"))
            } else {
                Ok(ExecutionOutput {
                    output: HashMap::from([(
                        "simulated_ms".to_string(),
                        duration.as_millis().to_string(),
                    )]),
                    logs: vec![format!("simulated {task}")],
                })
            }
        })
    }

    fn name(&self) -> &'static str {
        "simulated"
    }
}

/// Runs `sh -c <command>` for the ticket's task type, with the ticket in the environment:
/// `TICKET_ID`, `PLAN_ID`, `TASK_ID`, `TASK_TYPE`, `TICKET_JSON`, and `PARAM_<NAME>` per
/// parameter. Exit status 0 is success; the last lines of stdout become the logs. A task
/// type with no command fails. The child is killed when the attempt times out.
#[derive(Clone, Debug, Default)]
pub struct ShellExecutor {
    /// Command per task type.
    pub commands: HashMap<TaskType, String>,
}

/// Lines of output kept in a result.
const KEPT_LINES: usize = 20;

impl Executor for ShellExecutor {
    fn execute(&self, ticket: &ExecutionTicket, _attempt: u32) -> Attempt {
        let Some(command) = self.commands.get(&ticket.task_type).cloned() else {
            let message = format!(
                "no shell command is configured for task type {:?}",
                ticket.task_type
            );
            return Box::pin(async move { Err(message) });
        };
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&command)
            .env("TICKET_ID", &ticket.ticket_id)
            .env("PLAN_ID", &ticket.plan_id)
            .env("TASK_ID", &ticket.task_id)
            .env(
                "TASK_TYPE",
                format!("{:?}", ticket.task_type).to_uppercase(),
            )
            .env(
                "TICKET_JSON",
                serde_json::to_string(ticket).unwrap_or_default(),
            )
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for (name, value) in &ticket.parameters {
            let name: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            cmd.env(format!("PARAM_{name}"), value);
        }
        Box::pin(async move {
            let out = cmd
                .output()
                .await
                .map_err(|e| format!("could not start `{command}`: {e}"))?;
            let tail = |bytes: &[u8]| -> Vec<String> {
                let text = String::from_utf8_lossy(bytes);
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(KEPT_LINES)..]
                    .iter()
                    .map(|l| l.to_string())
                    .collect()
            };
            if out.status.success() {
                Ok(ExecutionOutput {
                    output: HashMap::from([("exit_code".to_string(), "0".to_string())]),
                    logs: tail(&out.stdout),
                })
            } else {
                let stderr = tail(&out.stderr).join("\n");
                Err(format!("`{command}` exited with {}: {stderr}", out.status))
            }
        })
    }

    fn name(&self) -> &'static str {
        "shell"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::tickets::{TicketStatus, sample_ticket};

    #[test]
    fn simulated_failures_follow_the_rate_and_repeat_for_the_same_attempt() {
        let failing = (0..10_000)
            .filter(|i| draw(&format!("ticket-{i}"), 0) < 0.2)
            .count();
        assert!(
            (1_700..2_300).contains(&failing),
            "{failing} of 10000 at 0.2"
        );
        assert_eq!(draw("t", 1), draw("t", 1));
        assert_ne!(draw("t", 1), draw("t", 2));
    }

    #[tokio::test]
    async fn the_simulated_executor_obeys_a_forced_failure() {
        let e = SimulatedExecutor {
            failure_rate: 0.0,
            time_scale: 0.0,
        };
        let mut t = sample_ticket(1, TicketStatus::Pending);
        assert!(e.execute(&t, 0).await.is_ok());
        t.parameters.insert("simulate".into(), "fail".into());
        assert!(
            e.execute(&t, 0)
                .await
                .unwrap_err()
                .contains("simulate = fail")
        );
    }

    #[tokio::test]
    async fn the_shell_executor_runs_the_command_of_the_task_type_with_the_ticket_in_its_environment()
     {
        let e = ShellExecutor {
            commands: HashMap::from([
                (
                    TaskType::Build,
                    "echo building $TICKET_ID for $PARAM_TARGET".to_string(),
                ),
                (TaskType::Test, "echo failing >&2; exit 3".to_string()),
            ]),
        };
        let mut t = sample_ticket(7, TicketStatus::Pending);
        t.parameters.insert("target".into(), "svc-1".into());
        let out = e.execute(&t, 0).await.unwrap();
        assert_eq!(out.logs, ["building ticket-7 for svc-1"]);
        t.task_type = TaskType::Test;
        let err = e.execute(&t, 0).await.unwrap_err();
        assert!(
            err.contains("exit status: 3") && err.contains("failing"),
            "{err}"
        );
        t.task_type = TaskType::Deploy;
        assert!(
            e.execute(&t, 0)
                .await
                .unwrap_err()
                .contains("no shell command")
        );
    }
}
