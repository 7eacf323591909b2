//! The HTML timeline report: one self-contained page (inline CSS and SVG, no scripts, no
//! external resources) with, per instance that is not clean, a timeline with one lane
//! per branch, boots and check-ins as marks, the fork points highlighted and the
//! entries that decided each verdict labelled; and per serial with a serial-level verdict
//! (a reinstall whose old instance ran on), a timeline with one lane per instance and the
//! time both were in use shaded. A support engineer sees at a glance what happened. The
//! summary and an index come last in the file and are shown first (CSS `order`), so the
//! page is written as results stream in.
//!
//! Every text that comes from input (serials, kinds, file names) is HTML-escaped. This
//! module only formats, into the writer it is given.

use std::io::{self, Write};

use super::report::{Head, InstanceReport, SerialReport, Sink, Summary, Verdict};
use crate::rules::{BranchId, Time};
use crate::time;

/// The kind of a mark on a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    Genesis,
    Boot,
    Checkin,
    CheckinFailed,
    ClockAnomaly,
    Other,
}

impl MarkKind {
    pub fn of(kind: &str) -> MarkKind {
        match kind {
            "genesis" => MarkKind::Genesis,
            "boot" => MarkKind::Boot,
            "checkin" => MarkKind::Checkin,
            "checkin_failed" => MarkKind::CheckinFailed,
            "clock_anomaly" => MarkKind::ClockAnomaly,
            _ => MarkKind::Other,
        }
    }
}

/// One entry on a lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The lane (a branch of an instance, or an instance of a serial).
    pub branch: BranchId,
    pub at: Time,
    pub seq: u64,
    /// The entry's kind (`checkin`, `boot`, ...), shown in its tooltip.
    pub kind: String,
}

/// One lane: a branch of an instance (or an instance of a serial), from its first entry
/// to its last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    pub branch: BranchId,
    /// What the lane is called (`branch 1`, `instance 0123…`).
    pub label: String,
    /// `primary`, `superseded`, `concurrent`, `disabled` (branches); `active`,
    /// `superseded`, `disabled` (instances of a serial).
    pub state: String,
    pub from: Time,
    pub to: Time,
    /// The branch it left, the fork point's time and seq.
    pub fork: Option<(BranchId, Time, u64)>,
}

/// What the HTML report draws for one instance, or for one serial's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    pub lanes: Vec<Lane>,
    pub marks: Vec<Mark>,
    /// Labelled entries: (lane, time, label), e.g. a verdict's trigger and witness.
    pub notes: Vec<(BranchId, Time, String)>,
    /// Shaded time ranges across every lane: (from, to, label), e.g. the time two
    /// instances of a serial were both in use.
    pub spans: Vec<(Time, Time, String)>,
}

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#222;background:#fafafa}
main{display:flex;flex-direction:column;gap:18px;padding:18px;max-width:1200px;margin:auto}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 16px}
#summary{order:-1}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:0 0 6px}
code{font:12px ui-monospace,monospace}
table{border-collapse:collapse;margin:6px 0}td,th{border-bottom:1px solid #eee;padding:2px 8px;text-align:left;font-size:13px}
.v{font-weight:600;padding:1px 6px;border-radius:4px;color:#fff}
.v-clean{background:#2a7}.v-restored{background:#58c}.v-invalid{background:#b70}
.v-concurrent_duplicate{background:#c33}.v-switching{background:#818}
.why{margin:4px 0;color:#333}.prob{color:#a40}
svg{background:#fff;max-width:100%;height:auto}
.legend span{margin-right:14px;font-size:12px}
"#;

const WIDTH: f64 = 1100.0;
const LEFT: f64 = 190.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 34.0;
const LANE: f64 = 46.0;
/// Marks drawn per instance at most (a huge ledger still gives a readable page).
const MAX_MARKS: usize = 20_000;

fn lane_color(state: &str) -> &'static str {
    match state {
        "primary" => "#2a7",
        "superseded" => "#999",
        "concurrent" => "#58c",
        "disabled" => "#c33",
        "active" => "#2a7",
        _ => "#666",
    }
}

/// Draw one instance's timeline as an inline SVG element.
pub fn svg(t: &Timeline) -> String {
    let mut s = String::new();
    let Some(t0) = t.lanes.iter().map(|l| l.from).min() else {
        return s;
    };
    let mut t1 = t.lanes.iter().map(|l| l.to).max().unwrap_or(t0);
    if t1 <= t0 {
        t1 = t0 + chrono::Duration::hours(1);
    }
    let span = (t1 - t0).num_milliseconds().max(1) as f64;
    let x = |at: Time| LEFT + ((at - t0).num_milliseconds() as f64 / span) * (WIDTH - LEFT - RIGHT);
    let row: std::collections::HashMap<BranchId, usize> = t
        .lanes
        .iter()
        .enumerate()
        .map(|(i, l)| (l.branch, i))
        .collect();
    let y = |b: BranchId| TOP + LANE * (*row.get(&b).unwrap_or(&0) as f64) + LANE / 2.0;
    let height = TOP + LANE * t.lanes.len() as f64 + if t.spans.is_empty() { 10.0 } else { 24.0 };
    s.push_str(&format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img">"#
    ));
    // Axis: day ticks, at most ~10 labels.
    let days = ((t1 - t0).num_hours() as f64 / 24.0).ceil().max(1.0) as i64;
    let step = [1i64, 2, 7, 14, 30, 60, 90, 180, 365]
        .into_iter()
        .find(|d| days / d <= 10)
        .unwrap_or(365);
    let mut day = t0.date_naive();
    while let Some(midnight) = day.and_hms_opt(0, 0, 0).map(|d| d.and_utc()) {
        if midnight > t1 {
            break;
        }
        if midnight >= t0 {
            let px = x(midnight);
            s.push_str(&format!(
                r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="14" font-size="11" text-anchor="middle" fill="#666">{}</text>"##,
                TOP - 12.0,
                height - 6.0,
                midnight.format("%Y-%m-%d")
            ));
        }
        day += chrono::Duration::days(step);
    }
    for (from, to, label) in &t.spans {
        let (a, b) = (x(*from.min(to)), x(*from.max(to)));
        s.push_str(&format!(
            r##"<rect x="{a:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#c33" fill-opacity="0.12"><title>{}</title></rect><text x="{:.1}" y="{:.1}" font-size="11" fill="#c33">{}</text>"##,
            TOP - 4.0,
            (b - a).max(2.0),
            LANE * t.lanes.len() as f64,
            esc(label),
            a + 3.0,
            height - 2.0,
            esc(label)
        ));
    }
    for l in &t.lanes {
        let yy = y(l.branch);
        let color = lane_color(&l.state);
        s.push_str(&format!(
            r##"<text x="8" y="{:.1}" font-size="12" fill="#222">{}</text><text x="8" y="{:.1}" font-size="11" fill="{color}">{}</text>"##,
            yy - 2.0,
            esc(&l.label),
            yy + 12.0,
            esc(&l.state)
        ));
        s.push_str(&format!(
            r#"<line x1="{:.1}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{color}" stroke-width="4" stroke-linecap="round"/>"#,
            x(l.from),
            x(l.to).max(x(l.from) + 2.0)
        ));
        if let Some((parent, at, seq)) = l.fork {
            let (fx, fy) = (x(at), y(parent));
            s.push_str(&format!(
                r##"<path d="M{fx:.1},{fy:.1} C{fx:.1},{yy:.1} {fx:.1},{yy:.1} {:.1},{yy:.1}" fill="none" stroke="#e80" stroke-width="2" stroke-dasharray="5,3"/><circle cx="{fx:.1}" cy="{fy:.1}" r="8" fill="none" stroke="#e80" stroke-width="3"><title>fork point: seq {seq} at {}</title></circle>"##,
                x(l.from),
                time::format_at(at)
            ));
        }
    }
    for m in t.marks.iter().take(MAX_MARKS) {
        let (mx, my) = (x(m.at), y(m.branch));
        let title = format!(
            "<title>seq {} {} at {}</title>",
            m.seq,
            esc(&m.kind),
            time::format_at(m.at)
        );
        let shape = match MarkKind::of(&m.kind) {
            MarkKind::Boot => format!(
                r##"<polygon points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="#123">{title}</polygon>"##,
                mx,
                my - 11.0,
                mx - 5.0,
                my - 3.0,
                mx + 5.0,
                my - 3.0
            ),
            MarkKind::Checkin => {
                format!(r##"<circle cx="{mx:.1}" cy="{my:.1}" r="3" fill="#123">{title}</circle>"##)
            }
            MarkKind::CheckinFailed => format!(
                r##"<circle cx="{mx:.1}" cy="{my:.1}" r="3" fill="#fff" stroke="#c33" stroke-width="1.5">{title}</circle>"##
            ),
            MarkKind::ClockAnomaly => format!(
                r##"<rect x="{:.1}" y="{:.1}" width="6" height="6" transform="rotate(45 {mx:.1} {:.1})" fill="#818">{title}</rect>"##,
                mx - 3.0,
                my + 4.0,
                my + 7.0
            ),
            MarkKind::Genesis => format!(
                r##"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="#222">{title}</rect>"##,
                mx - 4.0,
                my - 4.0
            ),
            MarkKind::Other => format!(
                r##"<line x1="{mx:.1}" y1="{:.1}" x2="{mx:.1}" y2="{:.1}" stroke="#777">{title}</line>"##,
                my + 3.0,
                my + 9.0
            ),
        };
        s.push_str(&shape);
    }
    for (b, at, label) in &t.notes {
        let (nx, ny) = (x(*at), y(*b));
        s.push_str(&format!(
            r##"<line x1="{nx:.1}" y1="{:.1}" x2="{nx:.1}" y2="{:.1}" stroke="#c33" stroke-width="2"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#c33">{}</text>"##,
            ny - 18.0,
            ny + 14.0,
            nx + 3.0,
            ny - 12.0,
            esc(label)
        ));
    }
    s.push_str("</svg>");
    s
}

/// Writes the HTML report as results stream in.
pub struct HtmlSink<W: Write> {
    w: W,
    /// (anchor, what, serial, verdict) for the index.
    index: Vec<(String, String, String, Verdict)>,
    serial_sections: usize,
}

impl<W: Write> HtmlSink<W> {
    pub fn new(w: W) -> Self {
        HtmlSink {
            w,
            index: Vec::new(),
            serial_sections: 0,
        }
    }

    /// A serial with serial-level verdicts: the verdicts, one lane per instance, a table
    /// of the instances.
    fn serial_section(&mut self, serial: &str, s: &SerialReport) -> io::Result<()> {
        self.serial_sections += 1;
        let anchor = format!("s-{}", self.serial_sections);
        let kind = s
            .verdicts
            .iter()
            .filter_map(|v| v["kind"].as_str().and_then(Verdict::parse))
            .max()
            .unwrap_or(s.verdict);
        self.index.push((
            anchor.clone(),
            format!("serial-level verdict, {} instances", s.instances.len()),
            serial.to_string(),
            kind,
        ));
        writeln!(
            self.w,
            r#"<section id="{anchor}"><h2><span class="v v-{k}">{k}</span> serial {}</h2>"#,
            esc(serial),
            k = kind.as_str()
        )?;
        self.why(&s.verdicts)?;
        if let Some(t) = &s.timeline {
            writeln!(self.w, "{}", svg(t))?;
        }
        writeln!(
            self.w,
            "<table><tr><th>instance</th><th>verdict</th><th>first entry</th><th>last entry</th><th>entries</th></tr>"
        )?;
        for i in &s.instances {
            let first = i.branches.iter().map(|b| b.first.at.as_str()).min();
            let last = i.branches.iter().map(|b| b.tip.at.as_str()).max();
            writeln!(
                self.w,
                r#"<tr><td><code>{}</code></td><td><span class="v v-{v}">{v}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&i.instance),
                esc(first.unwrap_or("-")),
                esc(last.unwrap_or("-")),
                i.entries,
                v = i.verdict.as_str()
            )?;
        }
        writeln!(self.w, "</table></section>")
    }

    /// One paragraph per verdict: what fired, under which rule, and why.
    fn why(&mut self, verdicts: &[serde_json::Value]) -> io::Result<()> {
        for v in verdicts {
            writeln!(
                self.w,
                r#"<p class="why"><b>{} ({})</b>, verdict <code>{}</code>: {}</p>"#,
                esc(v["kind"].as_str().unwrap_or_default()),
                esc(v["rule"].as_str().unwrap_or_default()),
                esc(v["verdict"].as_str().unwrap_or_default()),
                esc(v["explanation"].as_str().unwrap_or_default())
            )?;
        }
        Ok(())
    }

    fn instance(&mut self, serial: &str, i: &InstanceReport) -> io::Result<()> {
        let anchor = format!("i-{}", esc(&i.instance));
        self.index.push((
            anchor.clone(),
            serial.to_string(),
            i.instance.clone(),
            i.verdict,
        ));
        writeln!(
            self.w,
            r#"<section id="{anchor}"><h2><span class="v v-{v}">{v}</span> instance <code>{}</code> · serial {}</h2>"#,
            esc(&i.instance),
            esc(serial),
            v = i.verdict.as_str()
        )?;
        self.why(&i.verdicts)?;
        for id in &i.serial_verdicts {
            writeln!(
                self.w,
                r#"<p class="why">serial-level verdict <code>{}</code> (see the serial below)</p>"#,
                esc(id)
            )?;
        }
        for n in &i.notes {
            writeln!(self.w, r#"<p class="why">note: {}</p>"#, esc(n))?;
        }
        for p in &i.problems {
            writeln!(
                self.w,
                r#"<p class="prob">invalid: {}{} {}{}</p>"#,
                esc(p.file.as_deref().unwrap_or("")),
                p.seq.map(|s| format!(" seq {s}")).unwrap_or_default(),
                esc(&p.problem),
                if p.excluded > 0 {
                    format!(" ({} later entries left out)", p.excluded)
                } else {
                    String::new()
                }
            )?;
        }
        if let Some(t) = &i.timeline {
            writeln!(self.w, "{}", svg(t))?;
        }
        writeln!(
            self.w,
            "<table><tr><th>branch</th><th>state</th><th>forked at</th><th>first</th><th>last</th><th>entries</th><th>boots</th><th>check-ins (failed)</th></tr>"
        )?;
        for b in &i.branches {
            writeln!(
                self.w,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td></tr>",
                b.branch,
                esc(&b.state),
                b.fork
                    .as_ref()
                    .map(|f| format!("branch {} seq {} ({})", f.branch, f.seq, esc(&f.at)))
                    .unwrap_or_else(|| "genesis".into()),
                esc(&b.first.at),
                esc(&b.tip.at),
                b.entries,
                b.boots.len(),
                b.checkins,
                b.checkins_failed
            )?;
        }
        writeln!(self.w, "</table></section>")
    }
}

impl<W: Write> Sink for HtmlSink<W> {
    fn begin(&mut self, head: &Head) -> io::Result<()> {
        writeln!(
            self.w,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>vmledger cross-check</title><style>{STYLE}</style></head><body><main>"
        )?;
        writeln!(
            self.w,
            "<section><p>Cross-check of <code>{}</code>; signatures checked: {}; clock tolerance {} minutes; {} declared window(s). Legend: ▲ boot, ● check-in, ○ failed check-in, ◆ clock anomaly, ■ genesis; the orange ring is a fork point (two signed entries with the same predecessor), red labels mark the entries that decided a verdict; on a serial's timeline (one lane per instance) the red shading is the time two instances were both in use.</p></section>",
            esc(&head.paths.join(" ")),
            esc(&head.signatures),
            head.policy.clock_tolerance_minutes,
            head.policy.windows.len()
        )
    }

    fn serial(&mut self, s: &SerialReport) -> io::Result<()> {
        let serial = s.serial.clone().unwrap_or_else(|| "-".into());
        for i in s.instances.iter().filter(|i| i.verdict != Verdict::Clean) {
            self.instance(&serial, i)?;
        }
        if !s.verdicts.is_empty() {
            self.serial_section(&serial, s)?;
        }
        Ok(())
    }

    fn finish(&mut self, head: &Head, summary: &Summary) -> io::Result<()> {
        writeln!(
            self.w,
            "<section id=\"summary\"><h1>vmledger cross-check</h1><table><tr><th></th>{}</tr>",
            Verdict::ALL
                .iter()
                .map(|v| format!("<th><span class=\"v v-{0}\">{0}</span></th>", v.as_str()))
                .collect::<String>()
        )?;
        for (name, c) in [
            ("instances", &summary.instances),
            ("serials", &summary.serials),
        ] {
            writeln!(
                self.w,
                "<tr><td>{name}</td>{}</tr>",
                Verdict::ALL
                    .iter()
                    .map(|v| format!("<td>{}</td>", c.get(*v)))
                    .collect::<String>()
            )?;
        }
        writeln!(
            self.w,
            "</table><p>{} files, {} entries read, {} distinct judged, {} duplicates, {} signatures checked, {} unreadable files.</p><p><b>Result:</b> {}</p>",
            summary.files,
            summary.entries_read,
            summary.entries,
            summary.duplicates,
            summary.signatures_checked,
            summary.unreadable,
            esc(&summary.result())
        )?;
        if !self.index.is_empty() {
            writeln!(self.w, "<ul>")?;
            for (anchor, what, serial, v) in &self.index {
                writeln!(
                    self.w,
                    r##"<li><a href="#{anchor}"><span class="v v-{v}">{v}</span> <code>{}</code></a> · serial {}</li>"##,
                    esc(what),
                    esc(serial),
                    v = v.as_str()
                )?;
            }
            writeln!(self.w, "</ul>")?;
        }
        for f in &head.unreadable {
            writeln!(
                self.w,
                r#"<p class="prob">unreadable: <code>{}</code>: {}</p>"#,
                esc(&f.path),
                esc(&f.reason)
            )?;
        }
        writeln!(self.w, "</section></main></body></html>")?;
        self.w.flush()
    }
}
