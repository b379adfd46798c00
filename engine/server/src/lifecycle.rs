//! The server's life cycle as one [`Phase`], stored once ([`Lifecycle`]) and moved only by
//! [`Transition`]s. Liveness, readiness, the `/health` verdict, request admission and the
//! scheduler's refusal of new jobs all read it; none of them infers the state from flags or
//! matches reason strings.
//!
//! | phase, then:      | Loaded | LoadFailed | DrainStarted | SchedulerExited |
//! |-------------------|--------|------------|--------------|-----------------|
//! | Loading           | Ready  | Failed     | Draining     | Failed          |
//! | Ready             |        |            | Draining     | Failed          |
//! | Draining          |        | Failed     |              | Stopped         |
//! | Stopped, Failed   |        |            |              |                 |
//!
//! An empty cell leaves the phase as it is (a second signal, `Loaded` after a failure);
//! `Stopped` and `Failed` are final.

use std::sync::Mutex;

/// Where the server is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Listening (probes answer); the model is loading.
    Loading,
    /// The model is loaded and the scheduler runs: requests are admitted.
    Ready,
    /// SIGTERM or SIGINT arrived: no new work; queued and running requests finish.
    Draining,
    /// The drain is over and the scheduler has exited; the process is about to exit.
    Stopped,
    /// The server can never serve: the model failed to load, or the scheduler died.
    Failed(Failure),
}

/// Why a server [`Phase::Failed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Loading the model failed, with this error.
    Load(String),
    /// The scheduler thread exited while the server was not draining (a panic).
    SchedulerDied,
}

/// What moves the phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The model, tokenizer and chat template are in place and the scheduler runs.
    Loaded,
    LoadFailed(String),
    /// A shutdown signal arrived.
    DrainStarted,
    /// The scheduler thread ended, however it ended.
    SchedulerExited,
}

/// Why `/health/ready` says no, as its `reason` field names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotReady {
    LoadFailed,
    Draining,
    Loading,
    SchedulerDead,
    /// The phase is [`Phase::Ready`] but the wait queue is full.
    QueueFull,
}

impl NotReady {
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::LoadFailed => "load_failed",
            NotReady::Draining => "draining",
            NotReady::Loading => "loading",
            NotReady::SchedulerDead => "scheduler_dead",
            NotReady::QueueFull => "queue_full",
        }
    }

    /// Whether the server will never become ready again (`/health` says `unhealthy`, 503);
    /// otherwise it is `degraded` for now.
    pub fn is_fatal(self) -> bool {
        matches!(self, NotReady::LoadFailed | NotReady::SchedulerDead)
    }
}

impl Phase {
    /// The phase after `t`.
    pub fn after(self, t: Transition) -> Phase {
        use Phase::*;
        match (self, t) {
            (Loading, Transition::Loaded) => Ready,
            (Loading | Draining, Transition::LoadFailed(e)) => Failed(Failure::Load(e)),
            (Loading | Ready, Transition::DrainStarted) => Draining,
            (Loading | Ready, Transition::SchedulerExited) => Failed(Failure::SchedulerDied),
            (Draining, Transition::SchedulerExited) => Stopped,
            (p, _) => p,
        }
    }

    /// `/health/live`: false only when the process should be restarted, i.e. the scheduler
    /// died. A failed load ends the process by itself; a drain is a planned exit.
    pub fn is_live(&self) -> bool {
        *self != Phase::Failed(Failure::SchedulerDied)
    }

    /// Whether new work is refused because the server is shutting down.
    pub fn is_draining(&self) -> bool {
        matches!(self, Phase::Draining | Phase::Stopped)
    }

    /// Why the phase keeps the server from being ready, or None in [`Phase::Ready`] (where
    /// a full queue may still make it not ready; see [`NotReady::QueueFull`]).
    pub fn not_ready(&self) -> Option<NotReady> {
        match self {
            Phase::Ready => None,
            Phase::Loading => Some(NotReady::Loading),
            Phase::Draining | Phase::Stopped => Some(NotReady::Draining),
            Phase::Failed(Failure::Load(_)) => Some(NotReady::LoadFailed),
            Phase::Failed(Failure::SchedulerDied) => Some(NotReady::SchedulerDead),
        }
    }

    /// The load error, in [`Failure::Load`].
    pub fn load_error(&self) -> Option<&str> {
        match self {
            Phase::Failed(Failure::Load(e)) => Some(e),
            _ => None,
        }
    }
}

/// The one stored [`Phase`], shared by the HTTP side, the loader and the scheduler.
#[derive(Debug)]
pub struct Lifecycle {
    phase: Mutex<Phase>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: Mutex::new(Phase::Loading),
        }
    }
}

impl Lifecycle {
    /// A snapshot of the phase (one per answer, so an answer is consistent).
    pub fn phase(&self) -> Phase {
        self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies `t`; returns the new phase.
    pub fn apply(&self, t: Transition) -> Phase {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        *p = std::mem::replace(&mut *p, Phase::Loading).after(t);
        p.clone()
    }

    pub fn is_draining(&self) -> bool {
        self.phase
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_draining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_phases() -> Vec<Phase> {
        vec![
            Phase::Loading,
            Phase::Ready,
            Phase::Draining,
            Phase::Stopped,
            Phase::Failed(Failure::Load("bad file".into())),
            Phase::Failed(Failure::SchedulerDied),
        ]
    }

    fn all_transitions() -> Vec<Transition> {
        vec![
            Transition::Loaded,
            Transition::LoadFailed("late".into()),
            Transition::DrainStarted,
            Transition::SchedulerExited,
        ]
    }

    fn run(ts: &[Transition]) -> Phase {
        let l = Lifecycle::default();
        for t in ts {
            l.apply(t.clone());
        }
        l.phase()
    }

    #[test]
    fn the_normal_life_and_its_probes() {
        use Transition::*;
        assert_eq!(run(&[]), Phase::Loading);
        assert_eq!(run(&[Loaded]), Phase::Ready);
        assert_eq!(run(&[Loaded, DrainStarted]), Phase::Draining);
        assert_eq!(
            run(&[Loaded, DrainStarted, SchedulerExited]),
            Phase::Stopped
        );
        let probes = |p: Phase| (p.is_live(), p.not_ready(), p.is_draining());
        assert_eq!(
            probes(Phase::Loading),
            (true, Some(NotReady::Loading), false)
        );
        assert_eq!(probes(Phase::Ready), (true, None, false));
        assert_eq!(
            probes(Phase::Draining),
            (true, Some(NotReady::Draining), true)
        );
        // Live and draining until the process exits: a planned stop is not a death.
        assert_eq!(
            probes(Phase::Stopped),
            (true, Some(NotReady::Draining), true)
        );
    }

    #[test]
    fn failures() {
        use Transition::*;
        let load = run(&[LoadFailed("no such file".into())]);
        assert_eq!(load, Phase::Failed(Failure::Load("no such file".into())));
        assert_eq!(load.load_error(), Some("no such file"));
        assert_eq!(load.not_ready(), Some(NotReady::LoadFailed));
        assert!(load.is_live(), "a failed load ends the process itself");
        // A load failure during a drain is still reported as one.
        assert_eq!(
            run(&[DrainStarted, LoadFailed("x".into())]),
            Phase::Failed(Failure::Load("x".into()))
        );
        // The scheduler exiting outside a drain is a death: not live, not ready.
        for ts in [&[Loaded, SchedulerExited][..], &[SchedulerExited, Loaded]] {
            let dead = run(ts);
            assert_eq!(dead, Phase::Failed(Failure::SchedulerDied), "{ts:?}");
            assert!(!dead.is_live());
            assert_eq!(dead.not_ready(), Some(NotReady::SchedulerDead));
            assert!(!dead.is_draining());
        }
        assert!(NotReady::LoadFailed.is_fatal() && NotReady::SchedulerDead.is_fatal());
        for r in [NotReady::Loading, NotReady::Draining, NotReady::QueueFull] {
            assert!(!r.is_fatal(), "{r:?}");
        }
    }

    #[test]
    fn final_phases_stay_and_no_transition_goes_back() {
        let order = |p: &Phase| match p {
            Phase::Loading => 0,
            Phase::Ready => 1,
            Phase::Draining => 2,
            Phase::Stopped | Phase::Failed(_) => 3,
        };
        for p in all_phases() {
            for t in all_transitions() {
                let q = p.clone().after(t.clone());
                assert!(order(&q) >= order(&p), "{p:?} --{t:?}--> {q:?}");
                if order(&p) == 3 {
                    assert_eq!(q, p, "{p:?} is final, yet {t:?} moved it");
                }
                // Draining never un-drains except into a failure.
                if p.is_draining() {
                    assert!(q.is_draining() || matches!(q, Phase::Failed(_)), "{q:?}");
                }
            }
        }
        // Repeated signals and late loads change nothing.
        use Transition::*;
        assert_eq!(run(&[DrainStarted, DrainStarted, Loaded]), Phase::Draining);
        assert_eq!(run(&[Loaded, Loaded]), Phase::Ready);
    }

    #[test]
    fn names_are_the_wire_reasons() {
        let names: Vec<_> = [
            NotReady::LoadFailed,
            NotReady::Draining,
            NotReady::Loading,
            NotReady::SchedulerDead,
            NotReady::QueueFull,
        ]
        .map(NotReady::as_str)
        .to_vec();
        assert_eq!(
            names,
            [
                "load_failed",
                "draining",
                "loading",
                "scheduler_dead",
                "queue_full"
            ]
        );
    }
}
