//! Exit codes: the one table. `--help`, `docs/DESIGN.md`, the README and
//! the runbooks show this table (a test compares them); scripts and CronJob
//! alerting depend on it, so a code never changes meaning.

use cairn_source::ErrorClass;

use crate::StopReason;

pub const SUCCESS: u8 = 0;
pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const PARTIAL: u8 = 3;
pub const DAMAGED: u8 = 4;
pub const REPLICA_FAILED: u8 = 5;
pub const REPLICA_LAGGING: u8 = 6;
pub const DRILL_FAILED: u8 = 7;
pub const DRILL_MISSED: u8 = 8;
pub const DRILL_NOT_RUN: u8 = 9;
pub const NO_REPOSITORY: u8 = 10;
pub const LOCKED: u8 = 11;
pub const WRONG_PASSWORD: u8 = 12;
pub const STOP_RECOVERY: u8 = 126;
pub const INTERRUPTED: u8 = 130;
pub const TERMINATED: u8 = 143;

/// Every exit code and what it means, in order.
pub const TABLE: &[(u8, &str)] = &[
    (SUCCESS, "success"),
    (FAILURE, "failure (the one-line message says why and what to do)"),
    (
        USAGE,
        "bad usage (a flag, or a snapshot of another kind than the command takes; the message names the right command)",
    ),
    (PARTIAL, "backup written, but some files could not be read (listed in the snapshot)"),
    (DAMAGED, "check/verify/restore found damage, or a target differs from its snapshot"),
    (REPLICA_FAILED, "snapshot saved, but bringing a replica up to date failed (run `cairn replicate`)"),
    (REPLICA_LAGGING, "`replicate --verify --max-lag`: the replica is complete but lags more than allowed"),
    (DRILL_FAILED, "`drill`: a check failed (a restore point did not restore, verify or pass an assertion)"),
    (DRILL_MISSED, "`drill`: every check passed, but an RTO or RPO target was missed"),
    (DRILL_NOT_RUN, "`drill`: a source's drill could not run (no restore point, no scratch target)"),
    (NO_REPOSITORY, "repository does not exist"),
    (LOCKED, "repository is locked by another process, or this run lost its lease or lock"),
    (WRONG_PASSWORD, "wrong password"),
    (
        STOP_RECOVERY,
        "`wal-fetch` only: the WAL file may exist but could not be delivered; PostgreSQL stops recovery",
    ),
    (INTERRUPTED, "interrupted (SIGINT)"),
    (TERMINATED, "terminated (SIGTERM), e.g. a Kubernetes pod shutdown"),
];

/// The table for `--help`.
pub fn help_text() -> String {
    let mut text = String::from("Exit codes:\n");
    for (code, meaning) in TABLE {
        text.push_str(&format!("  {code:<3} {meaning}\n"));
    }
    text
}

/// The exit code of a failure of `class`, given why the run stopped (if it did).
pub fn code_for(class: ErrorClass, stopped: Option<&StopReason>) -> u8 {
    match (stopped, class) {
        (Some(StopReason::Signal(2)), _) => INTERRUPTED,
        (Some(StopReason::Signal(_)), _) => TERMINATED,
        (Some(StopReason::Lost(_)), _) => LOCKED,
        (None, ErrorClass::Failure) => FAILURE,
        (None, ErrorClass::Usage) => USAGE,
        (None, ErrorClass::Damaged) => DAMAGED,
        (None, ErrorClass::NoRepository) => NO_REPOSITORY,
        (None, ErrorClass::Locked) => LOCKED,
        (None, ErrorClass::WrongPassword) => WRONG_PASSWORD,
        // Cancelled without a signal or a loss on record: say so plainly.
        (None, ErrorClass::Interrupted) => INTERRUPTED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_losses_win_over_the_error_they_cause() {
        assert_eq!(code_for(ErrorClass::Interrupted, Some(&StopReason::Signal(15))), TERMINATED);
        assert_eq!(code_for(ErrorClass::Failure, Some(&StopReason::Signal(2))), INTERRUPTED);
        assert_eq!(code_for(ErrorClass::Interrupted, Some(&StopReason::Lost("lease".into()))), LOCKED);
        assert_eq!(code_for(ErrorClass::Damaged, None), DAMAGED);
        let codes: Vec<u8> = TABLE.iter().map(|(c, _)| *c).collect();
        let mut sorted = codes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(codes, sorted, "codes are listed once each, in order");
    }

    /// The README and docs/DESIGN.md show this table row for row, and the
    /// runbooks name only codes it has.
    #[test]
    fn the_documents_show_this_table() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for doc in ["README.md", "docs/DESIGN.md"] {
            let text = std::fs::read_to_string(root.join(doc)).unwrap();
            for (code, meaning) in TABLE {
                let row = format!("| {code} | {meaning} |");
                assert!(text.contains(&row), "{doc} lacks the row {row}");
            }
        }
        for entry in std::fs::read_dir(root.join("runbooks")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, _) in text.match_indices("exit code ") {
                let digits: String = text[i + 10..].chars().take_while(|c| c.is_ascii_digit()).collect();
                let code: u8 = digits
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: exit code without a number", path.display()));
                assert!(
                    TABLE.iter().any(|(c, _)| *c == code),
                    "{} names exit code {code}, which the table lacks",
                    path.display()
                );
            }
        }
    }
}
