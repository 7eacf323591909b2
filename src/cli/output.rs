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
        let message = error_text(err);
        eprintln!("vmledger: error: {message}");
        if self.json {
            error_document(&message);
        }
    }

    /// The JSON document for a command line that did not parse (clap has already printed
    /// its own text on stderr): the message without clap's `error: ` and help hints.
    pub fn usage_error(&self, rendered: &str) {
        let first = rendered
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let message = first.trim().trim_start_matches("error: ");
        error_document(&format!("usage: {message}"));
    }
}

fn error_document(message: &str) {
    let doc =
        json!({"format": "vmledger-error/v1", "error": message, "exit_code": crate::exit::ERROR});
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
}

/// An error and its causes on one line (`outer: cause: root cause`), each cause once.
///
/// Most error types already put their source's text in their own message
/// (`#[error("cannot read {path}: {source}")]`) so that `to_string()` alone says what went
/// wrong; anyhow's `{:#}` would then print that source a second time. A cause whose text
/// the line already holds is skipped.
pub fn error_text(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read key file {path}: {source}")]
    struct ReadError {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn each_cause_appears_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let io_text = io.to_string();
        let err = anyhow::Error::new(ReadError {
            path: "/s/instance.key".into(),
            source: io,
        })
        .context("cannot open the instance");
        let text = error_text(&err);
        assert_eq!(
            text,
            format!("cannot open the instance: cannot read key file /s/instance.key: {io_text}")
        );
        assert_eq!(text.matches(&io_text).count(), 1);
        // A context whose cause does not repeat it keeps the whole chain.
        let err = anyhow::Error::new(std::io::Error::other("disk full")).context("cannot write x");
        assert_eq!(error_text(&err), "cannot write x: disk full");
    }
}
