//! Exit codes: the one place that decides what number a command's outcome becomes.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | ok |
//! | 1 | a negative answer: verification failed, images differ, a violation was found |
//! | 2 | usage, I/O or internal error |
//! | 3 | locked: configuration changes are blocked |
//! | 4 | disabled: the appliance is permanently disabled |

/// The outcome of a command that ran to completion. Errors (code 2) are `Err` values and
/// are mapped by [`crate::cli::main`]; they never appear here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Exit 0.
    Ok,
    /// Exit 1: the command worked and the answer is "no".
    Negative,
    /// Exit 3: configuration changes are blocked by the license lock.
    Locked,
    /// Exit 4: the appliance is permanently disabled.
    Disabled,
    /// The exit status of a command that `vmledger gate -- CMD` ran on the caller's behalf,
    /// passed on unchanged.
    Child(u8),
}

/// Exit status for errors: usage, I/O, bad input, internal failures.
pub const ERROR: u8 = 2;

impl Exit {
    /// The process exit status for this outcome.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Negative => 1,
            Exit::Locked => 3,
            Exit::Disabled => 4,
            Exit::Child(code) => code,
        }
    }

    /// `Ok` when `ok` holds, `Negative` otherwise.
    pub fn from_bool(ok: bool) -> Exit {
        if ok { Exit::Ok } else { Exit::Negative }
    }
}
