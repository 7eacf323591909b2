//! libvirt's QEMU hook protocol: `NAME OPERATION SUB-OPERATION EXTRA` with the domain XML
//! on stdin (see <https://libvirt.org/hooks.html>), mapped to what vmledger does.
//!
//! | libvirt | vmledger |
//! |---|---|
//! | `prepare begin`, `restore begin` | a start: the guard, then `host_boot` or `start_refused` |
//! | `start begin` | nothing after this start's `prepare`; otherwise a start |
//! | `started begin` | `host_started` with the QEMU pid |
//! | `stopped end`, `release end` | `host_stop` (once), then the at-rest fingerprint |
//! | `migrate begin`, `reconnect begin`, `attach begin` | `host_running`; never refuses |
//! | anything else | nothing (new libvirt operations must never break a domain) |
//!
//! Only the start operations may fail: libvirt aborts the start and shows the hook's
//! stderr. A failing `started`, `reconnect` or `attach` hook makes libvirt kill the domain,
//! and a failing `migrate` hook cancels the migration: those never fail. `migrate` and
//! `restore` treat the hook's stdout as replacement XML, so the hook prints nothing there.

use super::engine::StartPhase;

/// What a libvirt hook call asks of vmledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start(StartPhase),
    Started,
    Stop(&'static str),
    Running(&'static str),
    /// An operation vmledger has nothing to do for.
    Ignore,
}

impl Action {
    /// True when a failure of this call must not reach libvirt (it would kill the domain
    /// or cancel a migration).
    pub fn must_not_fail(self) -> bool {
        matches!(self, Action::Started | Action::Running(_) | Action::Ignore)
    }
}

/// Map `OPERATION SUB-OPERATION` to an action.
pub fn action(op: &str, subop: &str) -> Action {
    match (op, subop) {
        ("prepare", "begin") => Action::Start(StartPhase::Prepare),
        ("start", "begin") => Action::Start(StartPhase::Start),
        ("restore", "begin") => Action::Start(StartPhase::Restore),
        ("started", "begin") => Action::Started,
        ("stopped", "end") => Action::Stop("stopped"),
        ("release", "end") => Action::Stop("release"),
        ("migrate", "begin") => Action::Running("migrate"),
        ("reconnect", "begin") => Action::Running("reconnect"),
        ("attach", "begin") => Action::Running("attach"),
        _ => Action::Ignore,
    }
}

/// The shutoff reason libvirt may pass as EXTRA (`-` means none).
pub fn reason(extra: Option<&str>) -> Option<&str> {
    extra.map(str::trim).filter(|e| !e.is_empty() && *e != "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_map_to_actions() {
        assert_eq!(
            action("prepare", "begin"),
            Action::Start(StartPhase::Prepare)
        );
        assert_eq!(action("release", "end"), Action::Stop("release"));
        assert_eq!(action("reconnect", "begin"), Action::Running("reconnect"));
        assert_eq!(action("prepare", "end"), Action::Ignore);
        assert_eq!(action("frobnicate", "begin"), Action::Ignore);
        assert!(action("migrate", "begin").must_not_fail());
        assert!(!action("prepare", "begin").must_not_fail());
        assert_eq!(reason(Some("-")), None);
        assert_eq!(reason(Some("destroyed")), Some("destroyed"));
    }
}
