//! What each hook phase does, whichever hypervisor calls it: a start (`prepare`,
//! `restore`, `pre-start`) runs the guard and records `host_boot` or `start_refused`;
//! `started` records the QEMU pid; `migrate`/`reconnect`/`attach` record that the domain
//! runs here and never refuse; a stop records `host_stop` and owes an at-rest
//! fingerprint, which [`Host::settle`] takes (in a detached process, or at the domain's
//! next start at the latest) and records as `disk_at_rest`.
//!
//! Locking: every change to the running markers and the roots index, and the check and
//! record of a start, happen under the guard lock; hashing never does (it can take
//! minutes), so one domain's hashing never holds up another domain's start. Never calls
//! back into the hypervisor: liveness comes from its pid files and `/proc`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Duration;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::disk::{self, DiskRecord};
use super::guard::{self, Candidate, CandidateDisk, Finding, ReachedState, RunningDisk};
use super::host::{self, HostDir};
use super::settings::{HookSettings, Policy};
use super::state::{
    ALLOW_FORMAT, AllowToken, MarkerDisk, ROOT_FORMAT, RUNNING_FORMAT, RootRecord, RootSource,
    RunningMarker, name_key,
};
use super::vm::{Vm, VmDisk};
use super::{HookError, kinds};
use crate::fingerprint::hardware::{Component, Fingerprint, Status};
use crate::fingerprint::image::{FormatChoice, Progress};
use crate::keys::SigningKey;
use crate::ledger::{Entry, Ledger};
use crate::time::{self, Clock};

/// Which hook phase starts a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPhase {
    /// libvirt `prepare begin`.
    Prepare,
    /// libvirt `start begin` (a no-op after this start's `prepare`).
    Start,
    /// libvirt `restore begin` (starting from a saved state).
    Restore,
    /// Proxmox `pre-start`.
    PreStart,
}

impl StartPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            StartPhase::Prepare => "prepare",
            StartPhase::Start => "start",
            StartPhase::Restore => "restore",
            StartPhase::PreStart => "pre-start",
        }
    }
}

/// What the guard decided about a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Nothing to say.
    Allowed,
    /// Allowed; the findings are warnings (a restore, a takeover, an own restore).
    AllowedWithWarnings,
    /// The rules refuse it, but `[hooks] policy = "warn"` lets it start.
    Warned,
    /// The rules refuse it, but an admin's one-time `vmledger hook allow` lets it start.
    Overridden,
    /// Refused.
    Refused,
    /// The continuation of a start already checked (`start` after `prepare`, `prepare`
    /// after `restore` or an incoming migration): nothing recorded.
    Continued,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::AllowedWithWarnings => "allowed_with_warnings",
            Decision::Warned => "warned",
            Decision::Overridden => "overridden",
            Decision::Refused => "refused",
            Decision::Continued => "continued",
        }
    }
    pub fn starts(self) -> bool {
        self != Decision::Refused
    }
}

/// The result of a start phase.
#[derive(Debug, Clone)]
pub struct StartOutcome {
    pub decision: Decision,
    pub findings: Vec<Finding>,
    /// For a refusal: the one line for stderr (the hypervisor shows it to the admin).
    pub refusal: Option<String>,
    /// Warnings and notes, one line each, for stderr (also in the hook log).
    pub notes: Vec<String>,
    /// The entry recorded (`host_boot` or `start_refused`).
    pub seq: Option<u64>,
}

/// How [`Host::settle`] treats a settle that another process is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleMode {
    /// Give up at once (a background settle: another one is doing the work).
    IfFree,
    /// Wait for it, then do whatever is still owed (a start of the same domain).
    Wait,
}

/// What a settle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOutcome {
    /// No at-rest fingerprint was owed.
    NothingOwed,
    /// Another process is taking it.
    Busy,
    /// The domain runs again: its disks are no longer at rest.
    RunningAgain,
    /// Recorded as `disk_at_rest` at `seq`.
    Recorded { seq: u64, disks: usize },
}

/// What [`Host::record_backup`] recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupRecorded {
    /// The `backup_manifest` entry.
    pub seq: u64,
    /// The domain counted as running here when the manifest was made.
    pub running: bool,
    /// The image's content is a state of the domain (in the roots index): the guard refuses
    /// to start a copy of it while the domain runs, and warns of a restore otherwise.
    pub state: bool,
    /// Why, in plain words.
    pub why: String,
}

/// The host: its directory, key, settings and clock.
pub struct Host<'a> {
    pub dir: HostDir,
    pub settings: HookSettings,
    key: SigningKey,
    clock: &'a dyn Clock,
}

impl std::fmt::Debug for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("dir", &self.dir).finish()
    }
}

/// `{"digest", "components": [{"name","class","digest"} | {"name","class","unavailable"}]}`:
/// the hardware fingerprint as ledgers record it (digests only, never values).
pub fn hardware_record(fp: &Fingerprint) -> Value {
    let comps: Vec<Value> = fp.components.iter().map(component_record).collect();
    json!({"digest": fp.digest, "components": comps})
}

fn component_record(c: &Component) -> Value {
    match (&c.status, &c.digest) {
        (Status::Present, Some(d)) => json!({"name": c.name, "class": c.class, "digest": d}),
        _ => json!({"name": c.name, "class": c.class,
                    "unavailable": c.reason.clone().unwrap_or_default()}),
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The disks a recorded entry lists (`host_boot`, `host_running`, `disk_at_rest`);
/// entries written by another version that do not parse give none.
pub fn recorded_disks(e: &Entry) -> Vec<DiskRecord> {
    e.body
        .data
        .get("disks")
        .and_then(|d| serde_json::from_value::<Vec<AtRestDisk>>(d.clone()).ok())
        .map(|v| v.into_iter().map(|d| d.disk).collect())
        .unwrap_or_default()
}

/// A disk in a `disk_at_rest` entry: the record plus whether the run changed it.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
struct AtRestDisk {
    #[serde(flatten)]
    disk: DiskRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    changed: Option<bool>,
}

/// A disk's target and the content root the run started from, when known.
type StartRoot = (String, Option<String>);

fn format_name(f: FormatChoice) -> Option<&'static str> {
    match f {
        FormatChoice::Auto => None,
        FormatChoice::Raw => Some("raw"),
        FormatChoice::Qcow2 => Some("qcow2"),
    }
}

fn format_of(name: Option<&str>) -> FormatChoice {
    match name {
        Some("raw") => FormatChoice::Raw,
        Some("qcow2") => FormatChoice::Qcow2,
        _ => FormatChoice::Auto,
    }
}

/// Read a pid file: the first line's decimal pid.
pub fn read_pid(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().next()?.trim().parse().ok().filter(|p| *p > 0)
}

/// True when `pid` is a live QEMU process (its command line names qemu or kvm), so a
/// recycled pid does not count. When `/proc` cannot tell, it counts as alive.
pub fn qemu_alive(pid: u32) -> bool {
    let dir = Path::new("/proc").join(pid.to_string());
    match std::fs::read(dir.join("cmdline")) {
        Ok(bytes) => {
            let s = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
            s.contains("qemu") || s.contains("kvm")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => dir.exists(),
    }
}

impl<'a> Host<'a> {
    /// Open the host directory in `state_dir`, creating it and the host key on first use.
    pub fn open(
        state_dir: &Path,
        settings: HookSettings,
        clock: &'a dyn Clock,
    ) -> Result<Host<'a>, HookError> {
        let dir = HostDir::new(state_dir);
        dir.ensure()?;
        let key = dir.load_or_create_key()?;
        Ok(Host {
            dir,
            settings,
            key,
            clock,
        })
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    fn now(&self) -> String {
        time::format_at(self.clock.now())
    }

    /// Append a line to the hook log, prefixed with the time, domain and phase. Never fails.
    pub fn log(&self, domain: &str, phase: &str, line: &str) {
        let _ = self
            .dir
            .log(&format!("{} {domain} {phase}: {line}", self.now()));
    }

    fn genesis(vm: &Vm) -> Map<String, Value> {
        obj(json!({
            "hypervisor": vm.hypervisor.as_str(),
            "uuid": vm.uuid,
            "name": vm.name,
            "vmid": vm.vmid,
        }))
    }

    fn ledger_for(&self, vm: &Vm) -> Result<Ledger, HookError> {
        self.dir
            .open_or_create_ledger(&vm.instance, &self.key, Host::genesis(vm), self.clock)
    }

    fn append(
        &self,
        ledger: &Ledger,
        kind: &str,
        data: Map<String, Value>,
    ) -> Result<Entry, HookError> {
        Ok(ledger.append(&self.key, kind, data, self.clock)?)
    }

    // ----- liveness --------------------------------------------------------------------

    /// Why a marked domain no longer runs, or `None` while it does (or may still be
    /// starting).
    fn vanished(&self, m: &RunningMarker, boot_id: &str) -> Option<String> {
        if m.boot_id != boot_id && m.boot_id != "unknown" && boot_id != "unknown" {
            return Some("the host has restarted since it was started".into());
        }
        if let Some(p) = read_pid(Path::new(&m.pid_file)) {
            if qemu_alive(p) {
                return None;
            }
            return Some(format!(
                "its QEMU process (pid {p} in {}) is gone",
                m.pid_file
            ));
        }
        if let Some(p) = m.pid {
            if qemu_alive(p) {
                return None;
            }
            return Some(format!(
                "its pid file {} is gone and its QEMU process (pid {p}) has exited",
                m.pid_file
            ));
        }
        let age = time::parse_at(&m.since)
            .map(|t| self.clock.now() - t)
            .unwrap_or(Duration::zero());
        let limit =
            Duration::seconds(i64::try_from(self.settings.start_timeout_secs).unwrap_or(i64::MAX));
        if age < limit {
            return None; // still starting: QEMU has not written its pid file yet
        }
        Some(format!(
            "it never started: no pid file {} within {} seconds of its start",
            m.pid_file, self.settings.start_timeout_secs
        ))
    }

    /// Record that a marked domain stopped without a stop hook (caller holds the guard
    /// lock).
    fn record_vanished(&self, m: &RunningMarker, why: &str) -> Result<(), HookError> {
        if let Some(ledger) = self.dir.open_ledger(&m.instance)? {
            let e = self.append(
                &ledger,
                kinds::HOST_STOP,
                obj(json!({
                    "phase": "vanished",
                    "reason": why,
                    "since": m.since,
                    "start_seq": m.seq,
                })),
            )?;
            self.owe_settle(&m.instance)?;
            self.log(
                &m.name,
                "reconcile",
                &format!("recorded a stop at seq {}: {why}", e.body.seq),
            );
        }
        self.dir.remove_marker(&m.instance)?;
        Ok(())
    }

    /// Check every running marker against the hypervisor's pid files and `/proc`; record
    /// and drop the ones whose domain vanished (a host crash, a killed daemon). Returns the
    /// markers still running. Caller holds the guard lock.
    pub fn reconcile(&self) -> Result<Vec<RunningMarker>, HookError> {
        let boot_id = self.clock.kernel().boot_id;
        let mut live = Vec::new();
        for m in self.dir.markers()? {
            match self.vanished(&m, &boot_id) {
                None => live.push(m),
                Some(why) => self.record_vanished(&m, &why)?,
            }
        }
        Ok(live)
    }

    fn owe_settle(&self, instance: &str) -> Result<(), HookError> {
        let p = self.dir.settle_pending_path(instance);
        crate::fsutil::write_private_atomic(&p, self.now().as_bytes())
            .map_err(|e| HookError::io(&p, "writing", e))
    }

    // ----- starts ----------------------------------------------------------------------

    fn is_continuation(&self, m: &RunningMarker, phase: StartPhase) -> bool {
        if m.pid.is_some() || m.boot_id != self.clock.kernel().boot_id {
            return false;
        }
        if self.vanished(m, &m.boot_id).is_some() {
            return false;
        }
        match phase {
            StartPhase::Start => matches!(m.phase.as_str(), "prepare" | "restore" | "migrate"),
            StartPhase::Prepare => matches!(m.phase.as_str(), "restore" | "migrate"),
            StartPhase::Restore | StartPhase::PreStart => m.phase == "migrate",
        }
    }

    /// The disks recorded with roots in the domain's last at-rest and last start entries:
    /// what the quick path compares against.
    fn known_disks(&self, ledger: Option<&Ledger>) -> Result<Vec<DiskRecord>, HookError> {
        let Some(l) = ledger else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for kind in [kinds::DISK_AT_REST, kinds::HOST_BOOT] {
            if let Some(e) = l.latest_of_kind(kind)? {
                out.extend(recorded_disks(&e));
            }
        }
        Ok(out)
    }

    fn hash_logged(&self, name: &str, phase: &str, d: &VmDisk) -> DiskRecord {
        let size = d
            .path
            .as_deref()
            .and_then(|p| disk::stat(p).ok())
            .map(|s| s.size)
            .unwrap_or(0);
        self.log(
            name,
            phase,
            &format!(
                "hashing disk {} ({}, {} bytes on disk): no recorded content root matches it",
                d.target,
                d.path.as_deref().unwrap_or(Path::new("?")).display(),
                size
            ),
        );
        let last = AtomicU64::new(0);
        let progress = |p: Progress| {
            if p.total == 0 {
                return;
            }
            let decile = p.done.saturating_mul(10) / p.total;
            if decile > last.load(Ordering::Relaxed) {
                last.store(decile, Ordering::Relaxed);
                self.log(
                    name,
                    phase,
                    &format!(
                        "hashing disk {}: {}% ({} of {} bytes)",
                        d.target,
                        decile * 10,
                        p.done,
                        p.total
                    ),
                );
            }
        };
        let r = disk::hash(d, Some(&progress));
        match (&r.content_root, &r.error) {
            (Some(root), _) => self.log(
                name,
                phase,
                &format!(
                    "disk {}: content root {root} ({} ms)",
                    d.target,
                    r.hash_ms.unwrap_or(0)
                ),
            ),
            (None, Some(e)) => self.log(name, phase, &format!("disk {}: {e}", d.target)),
            _ => {}
        }
        r
    }

    /// Identify the domain's guarded disks: the quick path when the recorded metadata
    /// still holds, else hash (or stat only without `hash_unknown`).
    fn identify_disks(
        &self,
        vm: &Vm,
        phase: &str,
        ledger: Option<&Ledger>,
        hash_unknown: bool,
    ) -> Result<Vec<DiskRecord>, HookError> {
        let known = self.known_disks(ledger)?;
        let mut out = Vec::new();
        for d in vm.disks.iter().filter(|d| d.guarded()) {
            let mut r = if d.path.is_none() {
                DiskRecord::not_local(d)
            } else if let Some(q) = disk::quick(d, &known) {
                q
            } else if hash_unknown {
                self.hash_logged(&vm.name, phase, d)
            } else {
                disk::unhashed(d)
            };
            r.format = format_name(d.format).map(str::to_string);
            out.push(r);
        }
        Ok(out)
    }

    fn ignored_disks(vm: &Vm) -> Vec<Value> {
        vm.disks
            .iter()
            .filter_map(|d| {
                d.ignored.map(|why| {
                    json!({"target": d.target, "device": d.device, "source": d.source, "reason": why})
                })
            })
            .collect()
    }

    fn reached_states(&self, roots: &[&str]) -> Result<Vec<ReachedState>, HookError> {
        let mut out: Vec<ReachedState> = Vec::new();
        for root in roots {
            for r in self.dir.roots(root)? {
                if out
                    .iter()
                    .any(|s| s.root == r.content_root && s.instance == r.instance)
                {
                    continue;
                }
                let (runs_since, last_start) = state_runs_since(&self.dir, &r)?;
                out.push(ReachedState {
                    root: r.content_root,
                    instance: r.instance,
                    uuid: r.uuid,
                    name: r.name,
                    seq: r.seq,
                    stopped_at: r.stopped_at,
                    source: r.source,
                    runs_since,
                    last_start,
                });
            }
        }
        Ok(out)
    }

    /// Starts of `instance` recorded after `seq`, and when the last one was.
    pub fn runs_since(&self, instance: &str, seq: u64) -> Result<(u64, Option<String>), HookError> {
        runs_since(&self.dir, instance, seq)
    }

    fn take_override(&self, vm: &Vm) -> Result<Option<(AllowToken, bool)>, HookError> {
        for key in [vm.instance.clone(), name_key(&vm.name)] {
            if let Some(t) = self.dir.take_allow(&key)? {
                let valid = time::parse_at(&t.expires)
                    .map(|exp| self.clock.now() <= exp)
                    .unwrap_or(false);
                return Ok(Some((t, valid)));
            }
        }
        Ok(None)
    }

    /// A start: run the guard and record the outcome. `policy` and `hash_unknown` are the
    /// effective settings (config, overridden by flags).
    pub fn start(
        &self,
        vm: &Vm,
        phase: StartPhase,
        policy: Policy,
        hash_unknown: bool,
    ) -> Result<StartOutcome, HookError> {
        let ph = phase.as_str();
        let mut notes = Vec::new();

        // 0. A marker of its own: the rest of a start already checked, or a run that
        //    ended without a stop hook (host crash, killed daemon).
        if let Some(m) = self.dir.marker(&vm.instance)? {
            if self.is_continuation(&m, phase) {
                return Ok(StartOutcome {
                    decision: Decision::Continued,
                    findings: Vec::new(),
                    refusal: None,
                    notes,
                    seq: None,
                });
            }
            let _g = self.dir.guard_lock()?;
            if self.dir.marker(&vm.instance)?.is_some() {
                self.record_vanished(&m, "a new start began while it was still marked running (it stopped without a stop hook)")?;
            }
        }

        // 1. An at-rest fingerprint still owed from its last stop: wait for it, or take it.
        self.settle(&vm.instance, SettleMode::Wait)?;

        // 2. Identify the disks (quick path, else hash) outside the guard lock.
        let ledger = self.dir.open_ledger(&vm.instance)?;
        let disks = self.identify_disks(vm, ph, ledger.as_ref(), hash_unknown)?;
        drop(ledger);

        // 3. Check and record under the guard lock.
        let _g = self.dir.guard_lock()?;
        let live = self.reconcile()?;
        let running: Vec<guard::RunningDomain> = live
            .iter()
            .map(|m| guard::RunningDomain {
                instance: m.instance.clone(),
                uuid: m.uuid.clone(),
                name: m.name.clone(),
                since: m.since.clone(),
                disks: m
                    .disks
                    .iter()
                    .map(|d| RunningDisk {
                        target: d.target.clone(),
                        path: d.path.clone(),
                        id: d.id.clone(),
                        source: d.source.clone(),
                        start_root: d.start_root.clone(),
                    })
                    .collect(),
            })
            .collect();
        let roots: Vec<&str> = disks
            .iter()
            .filter_map(|d| d.content_root.as_deref())
            .collect();
        let reached = self.reached_states(&roots)?;
        let candidate = Candidate {
            instance: vm.instance.clone(),
            name: vm.name.clone(),
            disks: disks
                .iter()
                .map(|d| CandidateDisk {
                    target: d.target.clone(),
                    path: d.file.as_ref().map(|f| f.path.clone()),
                    id: d.id().map(str::to_string),
                    source: d.source.clone(),
                    root: d.content_root.clone(),
                })
                .collect(),
        };
        let findings = guard::decide(&candidate, &running, &reached);
        let refusals: Vec<&Finding> = findings.iter().filter(|f| f.refuse).collect();

        let token = self.take_override(vm)?;
        let mut override_used = Value::Null;
        let decision = if refusals.is_empty() {
            if let Some((t, _)) = &token {
                notes.push(format!(
                    "the one-time override for {} (by {} at {}) was not needed and is used up",
                    vm.name, t.by, t.at
                ));
            }
            if findings.is_empty() {
                Decision::Allowed
            } else {
                Decision::AllowedWithWarnings
            }
        } else {
            match &token {
                Some((t, true)) => {
                    override_used = json!({"by": t.by, "reason": t.reason, "at": t.at});
                    Decision::Overridden
                }
                other => {
                    if let Some((t, false)) = other {
                        notes.push(format!(
                            "the override for {} by {} expired at {}; it was not used",
                            vm.name, t.by, t.expires
                        ));
                    }
                    if policy == Policy::Warn {
                        Decision::Warned
                    } else {
                        Decision::Refused
                    }
                }
            }
        };

        let ledger = self.ledger_for(vm)?;
        let guard_doc = json!({
            "decision": decision.as_str(),
            "policy": policy.as_str(),
            "override": override_used,
            "findings": findings,
        });
        let disks_doc = serde_json::to_value(&disks).unwrap_or(Value::Null);
        let mut data = obj(json!({
            "phase": ph,
            "hypervisor": vm.hypervisor.as_str(),
            "name": vm.name,
            "uuid": vm.uuid,
            "vmid": vm.vmid,
            "genid": vm.genid,
            "hardware": hardware_record(&vm.hardware),
            "disks": disks_doc,
            "ignored": Host::ignored_disks(vm),
            "guard": guard_doc,
        }));

        if decision == Decision::Refused {
            data.remove("hardware");
            let e = self.append(&ledger, kinds::START_REFUSED, data)?;
            let first = refusals[0];
            let more = if refusals.len() > 1 {
                format!(
                    " ({} more problem(s) in the host ledger)",
                    refusals.len() - 1
                )
            } else {
                String::new()
            };
            let line = format!(
                "vmledger: refusing to start {}: {}{more}. To start it anyway once, run `vmledger hook allow {}` and start it again.",
                vm.name, first.message, vm.name
            );
            self.log(
                &vm.name,
                ph,
                &format!("REFUSED (seq {}): {}", e.body.seq, first.message),
            );
            return Ok(StartOutcome {
                decision,
                findings,
                refusal: Some(line),
                notes,
                seq: Some(e.body.seq),
            });
        }

        let e = self.append(&ledger, kinds::HOST_BOOT, data)?;
        let marker = RunningMarker {
            format: RUNNING_FORMAT.into(),
            instance: vm.instance.clone(),
            uuid: vm.uuid.clone(),
            name: vm.name.clone(),
            hypervisor: vm.hypervisor.as_str().into(),
            vmid: vm.vmid.clone(),
            phase: ph.into(),
            since: e.body.at.clone(),
            boot_id: e.body.boot_id.clone(),
            pid_file: vm.pid_file.to_string_lossy().into_owned(),
            pid: None,
            seq: e.body.seq,
            disks: marker_disks(vm, &disks),
        };
        self.dir.write_marker(&marker)?;
        for f in &findings {
            let prefix = match decision {
                Decision::Warned if f.refuse => {
                    "WARNING (policy warn; the rules would refuse this start)"
                }
                Decision::Overridden if f.refuse => "OVERRIDDEN (one-time `vmledger hook allow`)",
                _ => "WARNING",
            };
            notes.push(format!("vmledger: {}: {prefix}: {}", vm.name, f.message));
        }
        let vias: Vec<String> = disks
            .iter()
            .map(|d| {
                format!(
                    "{} {}",
                    d.target,
                    serde_json::to_value(d.root_via)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                )
            })
            .collect();
        self.log(
            &vm.name,
            ph,
            &format!(
                "{} (seq {}; disks: {})",
                decision.as_str(),
                e.body.seq,
                if vias.is_empty() {
                    "none guarded".into()
                } else {
                    vias.join(", ")
                }
            ),
        );
        for n in &notes {
            self.log(&vm.name, ph, n);
        }
        Ok(StartOutcome {
            decision,
            findings,
            refusal: None,
            notes,
            seq: Some(e.body.seq),
        })
    }

    // ----- running -----------------------------------------------------------------------

    /// QEMU is up (`started`, `post-start`): record its pid.
    pub fn started(&self, vm: &Vm, phase: &str) -> Result<u64, HookError> {
        let _g = self.dir.guard_lock()?;
        let pid = read_pid(&vm.pid_file);
        let Some(mut m) = self.dir.marker(&vm.instance)? else {
            drop(_g);
            // Started without a start hook seen (the hook was installed meanwhile).
            return self.running(vm, phase);
        };
        let ledger = self.ledger_for(vm)?;
        let e = self.append(
            &ledger,
            kinds::HOST_STARTED,
            obj(json!({"phase": phase, "pid": pid, "start_seq": m.seq})),
        )?;
        m.phase = phase.into();
        m.pid = pid;
        self.dir.write_marker(&m)?;
        self.log(
            &vm.name,
            phase,
            &format!(
                "running, pid {} (seq {})",
                pid.map_or("unknown".into(), |p| p.to_string()),
                e.body.seq
            ),
        );
        Ok(e.body.seq)
    }

    /// The domain runs here without a start this host checked (`migrate` incoming,
    /// `reconnect`, `attach`): record it and mark it running. Never refuses.
    pub fn running(&self, vm: &Vm, phase: &str) -> Result<u64, HookError> {
        let _g = self.dir.guard_lock()?;
        let previous = self.dir.marker(&vm.instance)?;
        let pid = read_pid(&vm.pid_file).or(previous.as_ref().and_then(|m| m.pid));
        // Stat only: a running domain's disks are live, hashing them means nothing.
        let disks: Vec<DiskRecord> = vm
            .disks
            .iter()
            .filter(|d| d.guarded())
            .map(|d| {
                let mut r = if d.path.is_some() {
                    disk::unhashed(d)
                } else {
                    DiskRecord::not_local(d)
                };
                r.format = format_name(d.format).map(str::to_string);
                r
            })
            .collect();
        let ledger = self.ledger_for(vm)?;
        let e = self.append(
            &ledger,
            kinds::HOST_RUNNING,
            obj(json!({
                "phase": phase,
                "hypervisor": vm.hypervisor.as_str(),
                "name": vm.name,
                "uuid": vm.uuid,
                "vmid": vm.vmid,
                "genid": vm.genid,
                "pid": pid,
                "hardware": hardware_record(&vm.hardware),
                "disks": disks,
            })),
        )?;
        let mut mdisks = marker_disks(vm, &disks);
        if let Some(prev) = &previous {
            // Keep what the run started from (a reconnect does not change it).
            for d in &mut mdisks {
                d.start_root = prev
                    .disks
                    .iter()
                    .find(|p| p.target == d.target)
                    .and_then(|p| p.start_root.clone());
            }
        }
        let marker = RunningMarker {
            format: RUNNING_FORMAT.into(),
            instance: vm.instance.clone(),
            uuid: vm.uuid.clone(),
            name: vm.name.clone(),
            hypervisor: vm.hypervisor.as_str().into(),
            vmid: vm.vmid.clone(),
            phase: phase.into(),
            since: previous
                .as_ref()
                .map_or(e.body.at.clone(), |m| m.since.clone()),
            boot_id: e.body.boot_id.clone(),
            pid_file: vm.pid_file.to_string_lossy().into_owned(),
            pid,
            seq: previous.as_ref().map_or(e.body.seq, |m| m.seq),
            disks: mdisks,
        };
        self.dir.write_marker(&marker)?;
        self.log(&vm.name, phase, &format!("runs here (seq {})", e.body.seq));
        Ok(e.body.seq)
    }

    // ----- stops -------------------------------------------------------------------------

    /// A stop (`stopped end`, `release end`, `post-stop`): record it once and owe an at-rest
    /// fingerprint. Returns true when an at-rest fingerprint is owed (start a settle).
    pub fn stopped(&self, vm: &Vm, phase: &str, reason: Option<&str>) -> Result<bool, HookError> {
        let _g = self.dir.guard_lock()?;
        match self.dir.marker(&vm.instance)? {
            Some(m) => {
                let ledger = self.ledger_for(vm)?;
                let e = self.append(
                    &ledger,
                    kinds::HOST_STOP,
                    obj(json!({
                        "phase": phase,
                        "reason": reason,
                        "since": m.since,
                        "start_seq": m.seq,
                    })),
                )?;
                self.dir.remove_marker(&vm.instance)?;
                self.owe_settle(&vm.instance)?;
                self.log(&vm.name, phase, &format!("stopped (seq {})", e.body.seq));
                Ok(true)
            }
            None => {
                // Already recorded by an earlier stop phase, or the start was refused.
                Ok(self.dir.settle_pending_path(&vm.instance).exists())
            }
        }
    }

    // ----- at rest -----------------------------------------------------------------------

    /// Fingerprint a stopped domain's disks at rest, if its last stop still owes that, and
    /// record `disk_at_rest` plus the states its run reached (the roots index).
    pub fn settle(&self, instance: &str, mode: SettleMode) -> Result<SettleOutcome, HookError> {
        let pending = self.dir.settle_pending_path(instance);
        if !pending.exists() {
            return Ok(SettleOutcome::NothingOwed);
        }
        let lock_path = self.dir.settle_lock_path(instance);
        let _lock = match mode {
            SettleMode::Wait => host::lock_file(&lock_path)?,
            SettleMode::IfFree => match host::try_lock_file(&lock_path)? {
                Some(l) => l,
                None => return Ok(SettleOutcome::Busy),
            },
        };
        if !pending.exists() {
            return Ok(SettleOutcome::NothingOwed);
        }
        let clear = || match std::fs::remove_file(&pending) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HookError::io(&pending, "removing", e)),
        };
        if self.dir.marker(instance)?.is_some() {
            clear()?;
            return Ok(SettleOutcome::RunningAgain);
        }
        let Some(ledger) = self.dir.open_ledger(instance)? else {
            clear()?;
            return Ok(SettleOutcome::NothingOwed);
        };
        let Some(stop) = ledger.latest_of_kind(kinds::HOST_STOP)? else {
            clear()?;
            return Ok(SettleOutcome::NothingOwed);
        };
        let (start, start_roots) = self.run_start(&ledger, &stop)?;
        let Some(start) = start else {
            clear()?;
            return Ok(SettleOutcome::NothingOwed);
        };
        let name = start
            .body
            .data
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(instance)
            .to_string();
        let uuid = start
            .body
            .data
            .get("uuid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ran = recorded_disks(&start);
        drop(ledger);

        let mut at_rest: Vec<AtRestDisk> = Vec::new();
        for r in &ran {
            let Some(f) = &r.file else { continue };
            let d = VmDisk {
                target: r.target.clone(),
                device: r.device.clone(),
                source: r.source.clone(),
                path: Some(f.path.clone().into()),
                format: format_of(r.format.as_deref()),
                unreadable_format: None,
                ignored: None,
            };
            let mut rec = match disk::quick(&d, std::slice::from_ref(r)) {
                Some(q) => q,
                None => self.hash_logged(&name, "at-rest", &d),
            };
            rec.format = r.format.clone();
            let start_root = start_roots
                .iter()
                .find(|(t, _)| t == &r.target)
                .and_then(|(_, root)| root.clone());
            let changed = rec
                .content_root
                .as_ref()
                .map(|root| start_root.as_ref() != Some(root));
            at_rest.push(AtRestDisk { disk: rec, changed });
        }

        let _g = self.dir.guard_lock()?;
        if self.dir.marker(instance)?.is_some() {
            clear()?;
            return Ok(SettleOutcome::RunningAgain);
        }
        let ledger = match self.dir.open_ledger(instance)? {
            Some(l) => l,
            None => return Ok(SettleOutcome::NothingOwed),
        };
        let e = self.append(
            &ledger,
            kinds::DISK_AT_REST,
            obj(json!({"stop_seq": stop.body.seq, "start_seq": start.body.seq, "disks": at_rest})),
        )?;
        for d in &at_rest {
            if let (Some(root), Some(true)) = (&d.disk.content_root, d.changed) {
                self.dir.add_root(&RootRecord {
                    format: ROOT_FORMAT.into(),
                    content_root: root.clone(),
                    instance: instance.to_string(),
                    uuid: uuid.clone(),
                    name: name.clone(),
                    seq: e.body.seq,
                    at: e.body.at.clone(),
                    stopped_at: stop.body.at.clone(),
                    target: Some(d.disk.target.clone()),
                    path: d.disk.file.as_ref().map(|f| f.path.clone()),
                    source: RootSource::AtRest,
                    superseded: false,
                })?;
            }
        }
        clear()?;
        self.log(
            &name,
            "at-rest",
            &format!(
                "recorded {} disk(s) at rest (seq {})",
                at_rest.len(),
                e.body.seq
            ),
        );
        Ok(SettleOutcome::Recorded {
            seq: e.body.seq,
            disks: at_rest.len(),
        })
    }

    /// The entry that began the run `stop` ended (its `host_boot`, or `host_running` when
    /// it came in by migration), and the roots each disk started from.
    fn run_start(
        &self,
        ledger: &Ledger,
        stop: &Entry,
    ) -> Result<(Option<Entry>, Vec<StartRoot>), HookError> {
        let start_seq = stop.body.data.get("start_seq").and_then(Value::as_u64);
        let start = match start_seq {
            Some(s) if s < stop.body.seq => ledger.entry(s)?,
            _ => None,
        };
        let start = match start {
            Some(e) => Some(e),
            None => ledger.latest_of_kind(kinds::HOST_BOOT)?,
        };
        let Some(start) = start else {
            return Ok((None, Vec::new()));
        };
        let roots = recorded_disks(&start)
            .into_iter()
            .map(|d| (d.target, d.content_root))
            .collect();
        // A run that came in by migration or reconnect lists its disks but no roots.
        Ok((Some(start), roots))
    }

    // ----- backups -----------------------------------------------------------------------

    /// A backup manifest is being made of an image of domain `instance` holding
    /// `content_root`: record a `backup_manifest` entry and, unless the content is pristine
    /// (the domain never ran here, or it is what the domain's run started from), the state
    /// in the roots index, so the guard treats a restored copy of the backup as the domain's
    /// state. A backup taken while the domain runs (or older than its latest recorded
    /// state) is *superseded*: the domain has run on since, so starting a copy of it once
    /// the domain stopped is a restore. A state already in the index is left as it is (its
    /// record knows better when it was reached).
    pub fn record_backup(
        &self,
        instance: &str,
        image: &str,
        content_root: &str,
        virtual_size: u64,
    ) -> Result<BackupRecorded, HookError> {
        let _g = self.dir.guard_lock()?;
        let marker = self
            .reconcile()?
            .into_iter()
            .find(|m| m.instance == instance);
        let ledger = self
            .dir
            .open_ledger(instance)?
            .ok_or_else(|| HookError::UnknownDomain {
                query: instance.to_string(),
                dir: self.dir.root.clone(),
            })?;
        let name = domain_name(&self.dir, instance)?.unwrap_or_else(|| instance.to_string());
        let uuid = ledger
            .genesis()?
            .body
            .data
            .get("uuid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut last_run: Option<Entry> = None;
        for kind in [kinds::HOST_BOOT, kinds::HOST_RUNNING] {
            if let Some(e) = ledger.latest_of_kind(kind)?
                && last_run.as_ref().is_none_or(|l| e.body.seq > l.body.seq)
            {
                last_run = Some(e);
            }
        }
        let running = marker.is_some();
        // What the run in progress (or the last run) started from.
        let start_roots: Vec<String> = match &marker {
            Some(m) => m
                .disks
                .iter()
                .filter_map(|d| d.start_root.clone())
                .collect(),
            None => last_run
                .as_ref()
                .map(|e| {
                    recorded_disks(e)
                        .into_iter()
                        .filter_map(|d| d.content_root)
                        .collect()
                })
                .unwrap_or_default(),
        };
        let known = self
            .dir
            .roots(content_root)?
            .iter()
            .any(|r| r.instance == instance);
        let which_run = if running { "its current" } else { "its last" };
        let (state, why) = if known {
            (
                true,
                format!("the image holds a state {name} reached after running, already recorded"),
            )
        } else if last_run.is_none() {
            (
                false,
                format!(
                    "{name} has never run on this host: the image is no state it reached by running (a pristine image)"
                ),
            )
        } else if start_roots.iter().any(|r| r == content_root) {
            (
                false,
                format!(
                    "the image holds what {which_run} run started from, not a state {name} reached by running"
                ),
            )
        } else if running {
            (
                true,
                format!(
                    "recorded as a state of {name}, taken while it runs: a copy of it must not start while {name} runs"
                ),
            )
        } else {
            (
                true,
                format!(
                    "recorded as a state of {name}: a copy of it must not start while {name} runs"
                ),
            )
        };
        // Older than the domain's latest state: it ran on past this content.
        let superseded = running || {
            let last_start_seq = last_run.as_ref().map_or(0, |e| e.body.seq);
            match ledger.latest_of_kind(kinds::DISK_AT_REST)? {
                Some(e) if e.body.seq > last_start_seq => {
                    let roots: Vec<String> = recorded_disks(&e)
                        .into_iter()
                        .filter_map(|d| d.content_root)
                        .collect();
                    !roots.is_empty() && !roots.iter().any(|r| r == content_root)
                }
                _ => false,
            }
        };
        let e = self.append(
            &ledger,
            kinds::BACKUP_MANIFEST,
            obj(json!({
                "image": image,
                "content_root": content_root,
                "virtual_size": virtual_size,
                "running": running,
                "start_seq": marker.as_ref().map(|m| m.seq),
                "state": state,
            })),
        )?;
        if state && !known {
            self.dir.add_root(&RootRecord {
                format: ROOT_FORMAT.into(),
                content_root: content_root.to_string(),
                instance: instance.to_string(),
                uuid,
                name: name.clone(),
                seq: e.body.seq,
                at: e.body.at.clone(),
                stopped_at: e.body.at.clone(),
                target: None,
                path: Some(image.to_string()),
                source: RootSource::Backup,
                superseded,
            })?;
        }
        self.log(
            &name,
            "backup",
            &format!(
                "backup manifest of {image} (content root {content_root}, seq {}): {why}",
                e.body.seq
            ),
        );
        Ok(BackupRecorded {
            seq: e.body.seq,
            running,
            state,
            why,
        })
    }

    // ----- admin -------------------------------------------------------------------------

    /// Find a domain by name, uuid (with or without dashes) or Proxmox VMID among the host
    /// ledgers: `(instance, name)`.
    pub fn find_domain(&self, query: &str) -> Result<Option<(String, String)>, HookError> {
        find_domain(&self.dir, query)
    }

    /// Let the next start of `domain` through the guard once.
    pub fn allow(
        &self,
        domain: &str,
        by: &str,
        reason: Option<&str>,
    ) -> Result<(AllowToken, std::path::PathBuf), HookError> {
        let found = self.find_domain(domain)?;
        let key = match &found {
            Some((instance, _)) => instance.clone(),
            None => name_key(domain),
        };
        let now = self.clock.now();
        let ttl = Duration::hours(i64::try_from(self.settings.allow_ttl_hours).unwrap_or(24));
        let token = AllowToken {
            format: ALLOW_FORMAT.into(),
            domain: domain.to_string(),
            instance: found.as_ref().map(|(i, _)| i.clone()),
            by: by.to_string(),
            reason: reason.map(str::to_string),
            at: time::format_at(now),
            expires: time::format_at(now + ttl),
        };
        let path = self.dir.write_allow(&key, &token)?;
        let name = found.map_or(domain.to_string(), |(_, n)| n);
        self.log(
            &name,
            "allow",
            &format!(
                "one-time override by {by} until {}{}",
                token.expires,
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            ),
        );
        Ok((token, path))
    }
}

/// Starts of `instance` recorded after `seq`, and when the last one was.
pub fn runs_since(
    dir: &HostDir,
    instance: &str,
    seq: u64,
) -> Result<(u64, Option<String>), HookError> {
    let Some(l) = dir.open_ledger(instance)? else {
        return Ok((0, None));
    };
    let mut n = 0;
    let mut last = None;
    for e in l.entries_from(seq + 1)? {
        if e.body.kind == kinds::HOST_BOOT || e.body.kind == kinds::HOST_RUNNING {
            n += 1;
            last = Some(e.body.at.clone());
        }
    }
    Ok((n, last))
}

/// How often the domain of a recorded state has run since it: the starts recorded after
/// the entry that recorded it, plus the run that carried on past it when the state was
/// already superseded then (a backup taken while the domain ran). With the last start's
/// time when one is recorded.
pub fn state_runs_since(dir: &HostDir, r: &RootRecord) -> Result<(u64, Option<String>), HookError> {
    let (n, last) = runs_since(dir, &r.instance, r.seq)?;
    Ok((n + u64::from(r.superseded), last))
}

fn marker_disks(vm: &Vm, disks: &[DiskRecord]) -> Vec<MarkerDisk> {
    disks
        .iter()
        .map(|d| MarkerDisk {
            target: d.target.clone(),
            path: d.file.as_ref().map(|f| f.path.clone()).or_else(|| {
                vm.disks
                    .iter()
                    .find(|v| v.target == d.target)
                    .and_then(|v| v.path.as_ref())
                    .map(|p| p.to_string_lossy().into_owned())
            }),
            id: d.id().map(str::to_string),
            source: d.source.clone(),
            start_root: d.content_root.clone(),
        })
        .collect()
}

/// Find a domain by name, uuid or Proxmox VMID among the host ledgers in `dir`.
pub fn find_domain(dir: &HostDir, query: &str) -> Result<Option<(String, String)>, HookError> {
    let q = query.trim().to_ascii_lowercase();
    let q_instance = super::vm::instance_of(&q);
    for instance in dir.instances()? {
        if q_instance.as_deref() == Some(instance.as_str()) {
            let name = domain_name(dir, &instance)?.unwrap_or_else(|| instance.clone());
            return Ok(Some((instance, name)));
        }
    }
    for instance in dir.instances()? {
        let Some(l) = dir.open_ledger(&instance)? else {
            continue;
        };
        let g = l.genesis()?;
        let mut names = vec![
            g.body
                .data
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_string),
        ];
        for kind in [kinds::HOST_BOOT, kinds::HOST_RUNNING, kinds::START_REFUSED] {
            if let Some(e) = l.latest_of_kind(kind)? {
                names.push(
                    e.body
                        .data
                        .get("name")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                );
            }
        }
        let vmid = g.body.data.get("vmid").and_then(Value::as_str);
        if names.iter().flatten().any(|n| n == query) || vmid == Some(query) {
            let name = domain_name(dir, &instance)?.unwrap_or_else(|| instance.clone());
            return Ok(Some((instance, name)));
        }
    }
    Ok(None)
}

/// The domain's latest recorded name.
pub fn domain_name(dir: &HostDir, instance: &str) -> Result<Option<String>, HookError> {
    let Some(l) = dir.open_ledger(instance)? else {
        return Ok(None);
    };
    let mut best: Option<(u64, String)> = None;
    for kind in [
        kinds::GENESIS,
        kinds::HOST_BOOT,
        kinds::HOST_RUNNING,
        kinds::START_REFUSED,
    ] {
        if let Some(e) = l.latest_of_kind(kind)?
            && let Some(n) = e.body.data.get("name").and_then(Value::as_str)
            && best.as_ref().is_none_or(|(s, _)| e.body.seq > *s)
        {
            best = Some((e.body.seq, n.to_string()));
        }
    }
    Ok(best.map(|(_, n)| n))
}
