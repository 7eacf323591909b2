//! Scoring a cross-check report against the simulator's labels: confusion matrices per
//! instance and per serial (rows: the truth, columns: the verdict), the violations caught
//! with the right verdict, and the false positives (a flagged verdict on an instance
//! whose truth is legitimate). Reads both documents streaming the fields it needs.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Labels;
use crate::crosscheck::Verdict;

/// `matrix[truth][verdict]`, in [`Verdict::ALL`] order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub labels: Vec<Verdict>,
    pub matrix: Vec<Vec<u64>>,
    /// Truth is a violation (invalid, concurrent_duplicate, switching) and the verdict is
    /// the same.
    pub violations: u64,
    pub violations_caught: u64,
    /// Truth is legitimate (clean, restored) and the verdict is a violation or invalid.
    pub false_positives: u64,
    /// Truth and verdict differ.
    pub mismatches: u64,
    /// In the labels but not in the report.
    pub missing: u64,
}

impl Confusion {
    fn new() -> Confusion {
        Confusion {
            labels: Verdict::ALL.to_vec(),
            matrix: vec![vec![0; 5]; 5],
            ..Confusion::default()
        }
    }

    fn add(&mut self, truth: Verdict, got: Option<Verdict>) {
        let Some(got) = got else {
            self.missing += 1;
            return;
        };
        let ix = |v: Verdict| Verdict::ALL.iter().position(|x| *x == v).unwrap_or(0);
        self.matrix[ix(truth)][ix(got)] += 1;
        if truth.flagged() {
            self.violations += 1;
            self.violations_caught += u64::from(truth == got);
        } else if got.flagged() {
            self.false_positives += 1;
        }
        self.mismatches += u64::from(truth != got);
    }

    /// The matrix as a text table.
    pub fn table(&self) -> String {
        let mut s = format!("{:<22}", "truth \\ verdict");
        for v in &self.labels {
            s.push_str(&format!("{:>21}", v.as_str()));
        }
        s.push('\n');
        for (i, row) in self.matrix.iter().enumerate() {
            s.push_str(&format!("{:<22}", self.labels[i].as_str()));
            for n in row {
                s.push_str(&format!("{n:>21}"));
            }
            s.push('\n');
        }
        s
    }
}

/// Both matrices and the disagreements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Score {
    pub format: String,
    pub instances: Confusion,
    pub serials: Confusion,
    /// Up to 50 disagreements: (scope `instance` or `serial`, instance or serial, scenario
    /// as in the label file, truth, verdict or `None` when the report lacks it).
    pub disagreements: Vec<(String, String, String, Verdict, Option<Verdict>)>,
}

impl Score {
    /// Every violation caught with the right verdict, no false positive, nothing missing.
    pub fn perfect(&self) -> bool {
        [&self.instances, &self.serials]
            .iter()
            .all(|c| c.mismatches == 0 && c.missing == 0)
    }
}

/// Reading either document failed.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
struct ReportInstance {
    instance: String,
    verdict: Verdict,
}

#[derive(Deserialize)]
struct ReportSerial {
    serial: Option<String>,
    verdict: Verdict,
    instances: Vec<ReportInstance>,
}

#[derive(Deserialize)]
struct Report {
    format: String,
    serials: Vec<ReportSerial>,
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ScoreError> {
    let name = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| ScoreError::Read {
        path: name.clone(),
        source,
    })?;
    serde_json::from_reader(std::io::BufReader::new(f)).map_err(|e| ScoreError::Invalid {
        path: name,
        message: e.to_string(),
    })
}

/// A scenario as the label file names it (`concurrent_install`).
fn scenario_name(s: super::Scenario) -> String {
    match serde_json::to_value(s) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{s:?}"),
    }
}

/// Score the cross-check report at `report` against the label file at `labels`.
pub fn score(labels: &Path, report: &Path) -> Result<Score, ScoreError> {
    let l: Labels = read(labels)?;
    if l.format != super::LABELS_FORMAT {
        return Err(ScoreError::Invalid {
            path: labels.display().to_string(),
            message: format!("not a label file (format `{}`)", l.format),
        });
    }
    let r: Report = read(report)?;
    if r.format != crate::crosscheck::report::REPORT_FORMAT {
        return Err(ScoreError::Invalid {
            path: report.display().to_string(),
            message: format!("not a cross-check report (format `{}`)", r.format),
        });
    }
    let mut inst: HashMap<String, Verdict> = HashMap::new();
    let mut ser: HashMap<String, Verdict> = HashMap::new();
    for s in r.serials {
        if let Some(name) = s.serial {
            ser.insert(name, s.verdict);
        }
        for i in s.instances {
            inst.insert(i.instance, i.verdict);
        }
    }
    let mut out = Score {
        format: "vmledger-simulate-score/v1".into(),
        instances: Confusion::new(),
        serials: Confusion::new(),
        disagreements: Vec::new(),
    };
    for i in &l.instances {
        let got = inst.get(&i.instance).copied();
        out.instances.add(i.expected, got);
        if got != Some(i.expected) && out.disagreements.len() < 50 {
            out.disagreements.push((
                "instance".into(),
                i.instance.clone(),
                scenario_name(i.scenario),
                i.expected,
                got,
            ));
        }
    }
    for s in &l.serials {
        let got = ser.get(&s.serial).copied();
        out.serials.add(s.expected, got);
        if got != Some(s.expected) && out.disagreements.len() < 50 {
            out.disagreements.push((
                "serial".into(),
                s.serial.clone(),
                scenario_name(s.scenario),
                s.expected,
                got,
            ));
        }
    }
    Ok(out)
}
