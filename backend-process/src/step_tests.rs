//! One failure vocabulary: a step made to fail (fault injection) is reported naming that
//! step, on both ways a cell starts.

use abi::backend::PipeError;

use crate::fork_protocol::exit;
use crate::host::host_support;
use crate::image::Image;
use crate::step::{STEP_EXIT_BASE, Step, decode_record, record};
use crate::*;

/// The steps a direct spawn takes on this host, in no particular order.
fn direct_steps() -> Vec<Step> {
    let rootful = host_support().rootful;
    Step::ALL
        .into_iter()
        .filter(|s| match s {
            Step::TakeIds | Step::GoRecord | Step::CpuTimer => false,
            Step::DropHostIds | Step::UnshareUserNamespace => rootful,
            _ => true,
        })
        .collect()
}

/// The steps of a cell forked by the fork server, up to the guest's first script.
const FORKED_STEPS: [Step; 11] = [
    Step::TakeIds,
    Step::ParentDeathSignal,
    Step::ArrangeFds,
    Step::CloseFds,
    Step::DropBoundingSet,
    Step::DropCapabilities,
    Step::NewSession,
    Step::Seccomp,
    Step::GoRecord,
    Step::SetRlimits,
    Step::CpuTimer,
];

fn faulty(step: Step, fork_server: bool) -> SpawnSpec {
    SpawnSpec {
        fork_server,
        image: Image::Probe,
        args: vec!["ids".into()],
        fault: Some(step),
        ..SpawnSpec::default()
    }
}

#[test]
fn codes_are_stable_distinct_and_clear_of_other_exit_statuses() {
    for (i, step) in Step::ALL.into_iter().enumerate() {
        assert_eq!(
            usize::from(step.code()),
            i + 1,
            "{step:?}: codes are append-only"
        );
        assert_eq!(Step::from_code(step.code().into()), Some(step));
        assert_eq!(Step::from_exit_status(step.exit_status()), Some(step));
        assert!(step.exit_status() < 256);
        assert_eq!(decode_record(record(step, 13)), (step.code().into(), 13));
    }
    for status in [
        0,
        1,
        126,
        127,
        exit::OUT_OF_MEMORY,
        exit::CPU_TIME,
        exit::STACK_OVERFLOW,
        exit::PANICKED,
    ] {
        assert_eq!(Step::from_exit_status(status), None, "status {status}");
    }
    assert_eq!(Step::from_exit_status(STEP_EXIT_BASE), None);
}

#[test]
fn every_step_of_a_direct_spawn_that_fails_is_named() {
    for step in direct_steps() {
        match ProcessCell::spawn(&faulty(step, false)) {
            Err(e @ Error::Confinement { step: failed, .. }) => {
                assert_eq!(failed, step, "{e}");
                let message = e.to_string();
                assert!(message.contains(step.name()), "{message}");
                assert!(message.contains(step.describe()), "{message}");
            }
            other => panic!("{step:?}: {other:?}"),
        }
    }
}

#[test]
fn every_step_of_a_forked_cell_that_fails_is_named() {
    for step in FORKED_STEPS {
        let message = match ProcessCell::spawn(&faulty(step, true)) {
            // Failed before the spawn took it (found by the keeper or the spawn).
            Err(e) => {
                assert!(
                    matches!(e, Error::Confinement { step: failed, .. } if failed == step),
                    "{step:?}: {e}"
                );
                e.to_string()
            }
            // Failed after the spawn handed it on: its end names the step.
            Ok(mut cell) => {
                let t = cell.wait().unwrap();
                assert_eq!(t.failed_step(), Some(step), "{t:?}");
                match crate::exit::classify(&t, cell.limits(), None) {
                    PipeError::Crashed(message) => message,
                    other => panic!("{step:?}: {other:?}"),
                }
            }
        };
        assert!(message.contains(step.name()), "{message}");
    }
}

#[test]
fn without_a_fault_both_paths_start() {
    for fork_server in [true, false] {
        let spec = SpawnSpec {
            fault: None,
            ..faulty(Step::Exec, fork_server)
        };
        let mut cell = ProcessCell::spawn(&spec).unwrap();
        let t = cell.wait().unwrap();
        assert_eq!(
            t.status,
            ExitStatus::Exited(0),
            "fork server: {fork_server}"
        );
    }
}
