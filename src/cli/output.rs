//! Printing: human text or exactly one JSON document on stdout; errors on stderr (and,
//! with `--json`, also as a `vmledger-error/v1` document on stdout).

use std::io::Write;

use serde::Serialize;
use serde_json::json;

/// The output mode chosen by `--json`.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output { json }
    }

    /// Print `doc` as JSON with `--json`, else the text `human` builds.
    pub fn emit<T: Serialize + ?Sized>(
        &self,
        doc: &T,
        human: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        let result = if self.json {
            serde_json::to_writer_pretty(&mut stdout, doc)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(stdout))
        } else {
            let text = human();
            if text.is_empty() {
                Ok(())
            } else if text.ends_with('\n') {
                write!(stdout, "{text}")
            } else {
                writeln!(stdout, "{text}")
            }
        };
        match result {
            // A closed pipe (`vmledger ledger show | head`) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => Ok(other?),
        }
    }

    /// A line for the operator on stderr (never part of the JSON document).
    pub fn note(&self, line: impl AsRef<str>) {
        eprintln!("{}", line.as_ref());
    }

    /// Report a failed command.
    pub fn error(&self, err: &anyhow::Error) {
        let message = format!("{err:#}");
        eprintln!("vmledger: error: {message}");
        if self.json {
            let doc = json!({"format": "vmledger-error/v1", "error": message, "exit_code": crate::exit::ERROR});
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
    }
}
