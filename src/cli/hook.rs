//! `vmledger hook ...`: what libvirt and Proxmox VE run at VM starts and stops, installing
//! the libvirt hook, and the admin's commands on the host ledgers (`allow`, `status`,
//! `show`, `export`).
//!
//! `hook libvirt` and `hook proxmox` print nothing on stdout (libvirt reads a `migrate` or
//! `restore` hook's stdout as replacement XML); a refusal is one line on stderr, which
//! `virsh start` and Proxmox show. Warnings also go to stderr and to `host/hook.log`.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use anyhow::Context as _;
use serde_json::json;

use super::Ctx;
use crate::config::Config;
use crate::exit::Exit;
use crate::fingerprint::hardware::{libvirt as libvirt_xml, proxmox as proxmox_conf};
use crate::hooks::engine::{self, read_pid};
use crate::hooks::libvirt::{self as lv, Action};
use crate::hooks::proxmox::{self as px, Phase};
use crate::hooks::{
    Decision, Host, HostDir, Policy, SettleMode, SettleOutcome, Vm, install, kinds,
};
use crate::keys;
use crate::ledger::export::{Bundle, EXPORT_FORMAT};
use crate::time::{self, Clock, SystemClock};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// libvirt's QEMU hook: NAME OPERATION SUB-OPERATION [EXTRA], the domain XML on stdin
    Libvirt(LibvirtArgs),
    /// Proxmox VE hookscript: VMID PHASE (pre-start, post-start, pre-stop, post-stop)
    Proxmox(ProxmoxArgs),
    /// Install the libvirt hook script (idempotent; never overwrites a file it did not write)
    Install(InstallArgs),
    /// Remove the libvirt hook script that `hook install` wrote
    Uninstall(InstallArgs),
    /// Let the next start of DOMAIN through the duplicate-start guard, once
    Allow(AllowArgs),
    /// The domains the host ledgers know: running or not, last start and stop, disk roots
    Status(StatusArgs),
    /// Print a domain's host ledger entries
    Show(ShowArgs),
    /// Write a domain's host ledger as a vmledger-export/v1 bundle
    Export(ExportArgs),
    /// Fingerprint a stopped domain's disks at rest (run by the release hook, detached)
    #[command(hide = true)]
    Settle(SettleArgs),
}

/// Flags of the start phases.
#[derive(Debug, Clone, clap::Args)]
pub struct GuardFlags {
    /// Do not hash disks never seen before (record their metadata only)
    #[arg(long)]
    pub no_hash_unknown: bool,
    /// What to do with a start the rules refuse: refuse or warn [default: [hooks] policy,
    /// else refuse]
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct LibvirtArgs {
    /// The domain's name
    pub name: String,
    /// The operation: prepare, start, started, stopped, release, migrate, restore,
    /// reconnect, attach
    pub operation: String,
    /// The sub-operation: begin or end
    pub sub_operation: String,
    /// Extra argument (libvirt passes `-`)
    pub extra: Option<String>,
    /// Read the domain XML from FILE instead of stdin
    #[arg(long, value_name = "FILE", default_value = "-")]
    pub xml: PathBuf,
    #[command(flatten)]
    pub guard: GuardFlags,
}

#[derive(Debug, clap::Args)]
pub struct ProxmoxArgs {
    /// The VM's id
    pub vmid: String,
    /// The phase: pre-start, post-start, pre-stop or post-stop
    pub phase: String,
    /// Directory holding VMID.conf [default: [hooks] proxmox_config_dir, else
    /// /etc/pve/qemu-server]
    #[arg(long, value_name = "DIR")]
    pub conf_dir: Option<PathBuf>,
    #[command(flatten)]
    pub guard: GuardFlags,
}

/// What to install the hook for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Target {
    Libvirt,
}

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The hypervisor: libvirt
    pub target: Target,
    /// The directory libvirt reads QEMU hook scripts from
    #[arg(long, value_name = "DIR", default_value = install::LIBVIRT_HOOK_DIR)]
    pub dir: PathBuf,
    /// The script's file name in that directory
    #[arg(long, default_value = "vmledger")]
    pub name: String,
    /// The vmledger binary the script runs [default: this binary]
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct AllowArgs {
    /// The domain: its name, uuid or Proxmox VMID
    pub domain: String,
    /// Why (recorded with the override and in the host ledger when it is used)
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this domain (name, uuid or VMID)
    pub domain: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The domain: name, uuid or VMID
    pub domain: String,
    /// Only the last N entries
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The domain: name, uuid or VMID
    pub domain: String,
    /// Write to FILE instead of stdout
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SettleArgs {
    /// The domain's host ledger instance (its uuid without dashes)
    pub instance: String,
    /// Wait for a settle another process is running, then do what is still owed
    #[arg(long)]
    pub wait: bool,
}

pub fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<Exit> {
    let cfg = ctx.config(None)?;
    match cmd {
        Command::Libvirt(a) => libvirt(ctx, &cfg, a),
        Command::Proxmox(a) => proxmox(ctx, &cfg, a),
        Command::Install(a) => install_cmd(ctx, a, true),
        Command::Uninstall(a) => install_cmd(ctx, a, false),
        Command::Allow(a) => allow(ctx, &cfg, a),
        Command::Status(a) => status(ctx, &cfg, a),
        Command::Show(a) => show(ctx, &cfg, a),
        Command::Export(a) => export(ctx, &cfg, a),
        Command::Settle(a) => settle(ctx, &cfg, a),
    }
}

fn effective(cfg: &Config, g: &GuardFlags) -> anyhow::Result<(Policy, bool)> {
    let policy = match &g.policy {
        Some(p) => p
            .parse::<Policy>()
            .map_err(|e| anyhow::anyhow!("--policy: {e}"))?,
        None => cfg.hooks.policy,
    };
    Ok((policy, cfg.hooks.hash_unknown && !g.no_hash_unknown))
}

/// Drain stdin (libvirt writes the domain XML whether or not the hook wants it).
fn drain_stdin() {
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
}

fn libvirt(ctx: &Ctx, cfg: &Config, a: LibvirtArgs) -> anyhow::Result<Exit> {
    let action = lv::action(&a.operation, &a.sub_operation);
    if action == Action::Ignore {
        if a.xml == Path::new("-") {
            drain_stdin();
        }
        return Ok(Exit::Ok);
    }
    let (policy, hash_unknown) = effective(cfg, &a.guard)?;
    let clock = SystemClock;
    let result = (|| -> anyhow::Result<Exit> {
        let domain = libvirt_xml::read(&a.xml)?;
        let vm = Vm::from_libvirt(&domain, &cfg.hooks.libvirt_run_dir)?;
        let host = Host::open(cfg.state_dir()?, cfg.hooks.clone(), &clock)?;
        match action {
            Action::Start(phase) => start(&host, &vm, phase, policy, hash_unknown),
            Action::Started => {
                host.started(&vm, "started")?;
                Ok(Exit::Ok)
            }
            Action::Stop(phase) => {
                let reason = lv::reason(a.extra.as_deref());
                // libvirt runs `stopped end -`, then `release end REASON` with the shutoff
                // reason (`shutdown`, `destroyed`, `crashed`, ...): the stop is recorded
                // once, at release, with its reason (at `stopped` only when that carries a
                // reason itself). Should libvirtd die in between, the next start finds
                // the domain gone and records the stop from its pid file.
                if phase == "stopped" && reason.is_none() {
                    return Ok(Exit::Ok);
                }
                let owed = host.stopped(&vm, phase, reason)?;
                if owed && phase == "release" {
                    spawn_settle(ctx, cfg, &host, &vm)?;
                }
                Ok(Exit::Ok)
            }
            Action::Running(phase) => {
                host.running(&vm, phase)?;
                Ok(Exit::Ok)
            }
            Action::Ignore => Ok(Exit::Ok),
        }
    })();
    match result {
        Err(e) if action.must_not_fail() => {
            let e = super::output::error_text(&e);
            let line = format!(
                "vmledger: {} {}: {e} (not failing: libvirt would kill the domain or cancel the migration)",
                a.name, a.operation
            );
            eprintln!("{line}");
            if let Ok(dir) = cfg.state_dir() {
                let _ = HostDir::new(dir).log(&format!(
                    "{} {} {}: ERROR {e}",
                    time::format_at(clock.now()),
                    a.name,
                    a.operation
                ));
            }
            Ok(Exit::Ok)
        }
        Err(e) if matches!(action, Action::Start(_)) => Err(e.context(format!(
            "vmledger could not check the start of {}, so it refuses it; fix the problem above, or remove the hook script to start domains without the check",
            a.name
        ))),
        other => other,
    }
}

fn start(
    host: &Host,
    vm: &Vm,
    phase: crate::hooks::StartPhase,
    policy: Policy,
    hash_unknown: bool,
) -> anyhow::Result<Exit> {
    let out = host.start(vm, phase, policy, hash_unknown)?;
    for n in &out.notes {
        eprintln!("{n}");
    }
    if out.decision == Decision::Refused {
        if let Some(line) = &out.refusal {
            eprintln!("{line}");
        }
        return Ok(Exit::Negative);
    }
    Ok(Exit::Ok)
}

/// Start `vmledger hook settle INSTANCE` detached: its own process group, no stdio (libvirt
/// waits for the hook's output pipes to close), not waited for (this process exits at
/// once and the settle outlives it).
#[allow(clippy::zombie_processes)]
fn spawn_settle(ctx: &Ctx, cfg: &Config, host: &Host, vm: &Vm) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("cannot find this vmledger binary")?;
    let mut c = Process::new(exe);
    c.arg("--state-dir").arg(cfg.state_dir()?);
    if let Some(f) = ctx.global.config.as_ref().or(cfg.config_file.as_ref()) {
        c.arg("--config").arg(f);
    }
    c.args(["hook", "settle", &vm.instance])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    match c.spawn() {
        Ok(_child) => Ok(()),
        Err(e) => {
            // Not fatal: the next start of this domain takes the fingerprint itself.
            host.log(
                &vm.name,
                "release",
                &format!("could not start the at-rest fingerprint ({e}); the next start takes it"),
            );
            Ok(())
        }
    }
}

fn proxmox(ctx: &Ctx, cfg: &Config, a: ProxmoxArgs) -> anyhow::Result<Exit> {
    let vmid = px::parse_vmid(&a.vmid)?;
    let phase = Phase::parse(&a.phase)?;
    if phase == Phase::PreStop {
        return Ok(Exit::Ok);
    }
    let (policy, hash_unknown) = effective(cfg, &a.guard)?;
    let dir = a
        .conf_dir
        .clone()
        .unwrap_or_else(|| cfg.hooks.proxmox_config_dir.clone());
    let conf = proxmox_conf::read(&dir.join(format!("{vmid}.conf")))?;
    let storages = px::read_storage_cfg(&cfg.hooks.proxmox_storage_cfg)?;
    let vm = px::vm(vmid, &conf, &storages, &cfg.hooks.proxmox_run_dir);
    let clock = SystemClock;
    let host = Host::open(cfg.state_dir()?, cfg.hooks.clone(), &clock)?;
    match phase {
        Phase::PreStart => start(&host, &vm, crate::hooks::StartPhase::PreStart, policy, hash_unknown)
            .map_err(|e| {
                e.context(format!(
                    "vmledger could not check the start of VM {vmid}, so it refuses it; fix the problem above, or remove the hookscript to start without the check"
                ))
            }),
        Phase::PostStart => {
            host.started(&vm, "post-start")?;
            Ok(Exit::Ok)
        }
        Phase::PostStop => {
            if host.stopped(&vm, "post-stop", None)? {
                spawn_settle(ctx, cfg, &host, &vm)?;
            }
            Ok(Exit::Ok)
        }
        Phase::PreStop => Ok(Exit::Ok),
    }
}

fn install_cmd(ctx: &Ctx, a: InstallArgs, installing: bool) -> anyhow::Result<Exit> {
    let Target::Libvirt = a.target;
    if a.name.is_empty() || a.name.contains('/') || a.name.starts_with('.') {
        anyhow::bail!("--name `{}`: use a plain file name", a.name);
    }
    let path = a.dir.join(&a.name);
    if !installing {
        let removed = install::uninstall(&path)?;
        let doc = json!({
            "format": "vmledger-hook-install/v1",
            "action": "uninstall",
            "path": path,
            "outcome": if removed { "removed" } else { "absent" },
            "restart_libvirtd": false,
        });
        return ctx
            .out
            .emit(&doc, || {
                if removed {
                    format!(
                        "removed {}; domain starts are no longer checked",
                        path.display()
                    )
                } else {
                    format!("{} is not installed; nothing changed", path.display())
                }
            })
            .map(|()| Exit::Ok);
    }
    let bin = match &a.bin {
        Some(b) => std::path::absolute(b)
            .with_context(|| format!("--bin {}: cannot make it absolute", b.display()))?,
        None => std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .context("cannot find this vmledger binary; pass --bin PATH")?,
    };
    let absolute = |p: &Option<PathBuf>| -> anyhow::Result<Option<PathBuf>> {
        p.as_ref()
            .map(|p| {
                std::path::absolute(p)
                    .with_context(|| format!("{}: cannot make it absolute", p.display()))
            })
            .transpose()
    };
    let state_dir = absolute(&ctx.global.state_dir)?;
    let config = absolute(&ctx.global.config)?;
    let script = install::libvirt_script(&bin, state_dir.as_deref(), config.as_deref());
    let outcome = install::install(&path, &script)?;
    let restart = outcome == install::Outcome::Installed;
    let message = match outcome {
        install::Outcome::Installed => format!(
            "installed {} (runs {}). libvirtd looks for hook scripts only when it starts: restart it now (`systemctl restart libvirtd`; running domains keep running) so that it calls the hook",
            path.display(),
            bin.display()
        ),
        install::Outcome::Updated => format!(
            "updated {} (runs {}); libvirtd runs the new version from its next call (restart libvirtd if it has not been restarted since the hook was first installed)",
            path.display(),
            bin.display()
        ),
        install::Outcome::Unchanged => format!(
            "{} is already installed and up to date; nothing changed",
            path.display()
        ),
    };
    let doc = json!({
        "format": "vmledger-hook-install/v1",
        "action": "install",
        "path": path,
        "outcome": outcome.as_str(),
        "bin": bin,
        "state_dir": state_dir,
        "config": config,
        "restart_libvirtd": restart,
        "message": message,
    });
    ctx.out.emit(&doc, || message.clone())?;
    Ok(Exit::Ok)
}

fn operator() -> String {
    for v in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(v)
            && !u.is_empty()
        {
            return u;
        }
    }
    format!("uid {}", nix::unistd::getuid())
}

fn allow(ctx: &Ctx, cfg: &Config, a: AllowArgs) -> anyhow::Result<Exit> {
    let clock = SystemClock;
    let host = Host::open(cfg.state_dir()?, cfg.hooks.clone(), &clock)?;
    let (token, path) = host.allow(&a.domain, &operator(), a.reason.as_deref())?;
    let known = token.instance.is_some();
    let doc = serde_json::to_value(&token)?;
    ctx.out.emit(&doc, || {
        format!(
            "the next start of {} passes the duplicate-start guard once (until {}; stored in {}){}; the start records the override in its host ledger",
            a.domain,
            token.expires,
            path.display(),
            if known {
                String::new()
            } else {
                " (no host ledger knows this domain yet: it is matched by name)".into()
            }
        )
    })?;
    Ok(Exit::Ok)
}

fn resolve(dir: &HostDir, query: &str) -> anyhow::Result<String> {
    match engine::find_domain(dir, query)? {
        Some((instance, _)) => Ok(instance),
        None => Err(crate::hooks::HookError::UnknownDomain {
            query: query.to_string(),
            dir: dir.root.clone(),
        }
        .into()),
    }
}

fn entry_brief(e: &crate::ledger::Entry) -> serde_json::Value {
    json!({"seq": e.body.seq, "at": e.body.at, "kind": e.body.kind})
}

fn status(ctx: &Ctx, cfg: &Config, a: StatusArgs) -> anyhow::Result<Exit> {
    let dir = HostDir::new(cfg.state_dir()?);
    let instances = match &a.domain {
        Some(q) => vec![resolve(&dir, q)?],
        None => dir.instances()?,
    };
    let mut domains = Vec::new();
    for instance in &instances {
        let Some(l) = dir.open_ledger(instance)? else {
            continue;
        };
        let g = l.genesis()?;
        let head = l.head()?;
        let marker = dir.marker(instance)?;
        let pid_alive = marker.as_ref().and_then(|m| {
            read_pid(Path::new(&m.pid_file))
                .or(m.pid)
                .map(engine::qemu_alive)
        });
        let last_start = match (
            l.latest_of_kind(kinds::HOST_BOOT)?,
            l.latest_of_kind(kinds::HOST_RUNNING)?,
        ) {
            (Some(b), Some(r)) => Some(if r.body.seq > b.body.seq { r } else { b }),
            (b, r) => b.or(r),
        };
        let last_start = last_start.map(|e| {
            let mut v = entry_brief(&e);
            v["phase"] = e.body.data.get("phase").cloned().unwrap_or_default();
            v["decision"] = e
                .body
                .data
                .get("guard")
                .and_then(|g| g.get("decision"))
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            v
        });
        let last_refused = l
            .latest_of_kind(kinds::START_REFUSED)?
            .map(|e| entry_brief(&e));
        let last_stop = l.latest_of_kind(kinds::HOST_STOP)?.map(|e| {
            let mut v = entry_brief(&e);
            v["phase"] = e.body.data.get("phase").cloned().unwrap_or_default();
            v
        });
        let at_rest = l.latest_of_kind(kinds::DISK_AT_REST)?.map(|e| {
            let disks: Vec<serde_json::Value> = engine::recorded_disks(&e)
                .iter()
                .map(|d| {
                    json!({
                        "target": d.target,
                        "path": d.file.as_ref().map(|f| f.path.clone()),
                        "content_root": d.content_root,
                    })
                })
                .collect();
            let mut v = entry_brief(&e);
            v["disks"] = json!(disks);
            v
        });
        domains.push(json!({
            "instance": instance,
            "uuid": g.body.data.get("uuid"),
            "name": engine::domain_name(&dir, instance)?,
            "hypervisor": g.body.data.get("hypervisor"),
            "vmid": g.body.data.get("vmid"),
            "running": marker.is_some(),
            "running_since": marker.as_ref().map(|m| m.since.clone()),
            "phase": marker.as_ref().map(|m| m.phase.clone()),
            "pid": marker.as_ref().and_then(|m| m.pid),
            "pid_alive": pid_alive,
            "entries": l.count()?,
            "head": head.map(|h| json!({"seq": h.seq, "hash": h.hash, "at": h.at})),
            "last_start": last_start,
            "last_refused": last_refused,
            "last_stop": last_stop,
            "at_rest": at_rest,
            "settle_pending": dir.settle_pending_path(instance).exists(),
        }));
    }
    let host_key = dir.load_key()?.map(|k| k.public_key_b64());
    let doc = json!({
        "format": "vmledger-hook-status/v1",
        "state_dir": cfg.state_dir()?,
        "host_key": host_key,
        "domains": domains,
    });
    ctx.out.emit(&doc, || {
        if domains.is_empty() {
            return format!("no domain has a host ledger in {}", dir.root.display());
        }
        let mut s = String::new();
        for d in &domains {
            let txt = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
            s.push_str(&format!(
                "{} ({}): {}\n",
                txt(&d["name"]),
                txt(&d["uuid"]),
                if d["running"] == true {
                    format!("running since {}", txt(&d["running_since"]))
                } else {
                    "not running".into()
                }
            ));
            if let Some(st) = d["last_start"].as_object() {
                s.push_str(&format!(
                    "  last start  seq {} at {} ({})\n",
                    st["seq"],
                    txt(&st["at"]),
                    txt(&st["decision"])
                ));
            }
            if let Some(st) = d["last_stop"].as_object() {
                s.push_str(&format!(
                    "  last stop   seq {} at {} ({})\n",
                    st["seq"],
                    txt(&st["at"]),
                    txt(&st["phase"])
                ));
            }
            if let Some(ar) = d["at_rest"].as_object() {
                for k in ar["disks"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "  at rest     {} {}\n",
                        txt(&k["target"]),
                        txt(&k["content_root"])
                    ));
                }
            }
        }
        s
    })?;
    Ok(Exit::Ok)
}

fn show(ctx: &Ctx, cfg: &Config, a: ShowArgs) -> anyhow::Result<Exit> {
    let dir = HostDir::new(cfg.state_dir()?);
    let instance = resolve(&dir, &a.domain)?;
    let l = dir
        .open_ledger(&instance)?
        .context("the domain's host ledger vanished")?;
    let entries = match a.tail {
        Some(n) => l.tail(n)?,
        None => l.entries_from(0)?,
    };
    let doc = json!({"format": "vmledger-entries/v1", "entries": entries});
    ctx.out.emit(&doc, || {
        let mut s = String::new();
        for e in &entries {
            let detail = match e.body.kind.as_str() {
                kinds::HOST_BOOT | kinds::START_REFUSED => e
                    .body
                    .data
                    .get("guard")
                    .and_then(|g| g.get("decision"))
                    .and_then(|d| d.as_str())
                    .unwrap_or("")
                    .to_string(),
                kinds::HOST_STOP => e
                    .body
                    .data
                    .get("phase")
                    .and_then(|d| d.as_str())
                    .unwrap_or("")
                    .to_string(),
                _ => String::new(),
            };
            s.push_str(&format!(
                "{:>6}  {}  {:<16} {}  {}\n",
                e.body.seq,
                e.body.at,
                e.body.kind,
                &e.hash[..12],
                detail
            ));
        }
        s
    })?;
    Ok(Exit::Ok)
}

fn export(ctx: &Ctx, cfg: &Config, a: ExportArgs) -> anyhow::Result<Exit> {
    let dir = HostDir::new(cfg.state_dir()?);
    let instance = resolve(&dir, &a.domain)?;
    let l = dir
        .open_ledger(&instance)?
        .context("the domain's host ledger vanished")?;
    let g = l.genesis()?;
    let pk = g.genesis_public_key().map_err(|p| anyhow::anyhow!("{p}"))?;
    let bundle = Bundle {
        format: EXPORT_FORMAT.into(),
        serial: None,
        instance: instance.clone(),
        public_key: keys::b64_encode(&pk),
        exported_at: time::format_at(SystemClock.now()),
        entries: l.entries_from(0)?,
    };
    match a.output {
        None => {
            let mut out = ctx.out;
            out.json = true;
            out.emit(&bundle, String::new)?;
        }
        Some(path) => {
            let mut bytes = serde_json::to_vec(&bundle)?;
            bytes.push(b'\n');
            crate::fsutil::write_output(&path, &bytes)
                .with_context(|| format!("cannot write the export to {}", path.display()))?;
            let doc = json!({
                "format": "vmledger-export-written/v1",
                "path": path,
                "entries": bundle.entries.len(),
                "first_seq": bundle.entries.first().map(|e| e.body.seq),
                "last_seq": bundle.entries.last().map(|e| e.body.seq),
            });
            ctx.out.emit(&doc, || {
                format!(
                    "exported {} entries of {} to {}",
                    bundle.entries.len(),
                    a.domain,
                    path.display()
                )
            })?;
        }
    }
    Ok(Exit::Ok)
}

fn settle(ctx: &Ctx, cfg: &Config, a: SettleArgs) -> anyhow::Result<Exit> {
    if !crate::hooks::is_instance(&a.instance) {
        anyhow::bail!(
            "`{}` is not a host ledger instance (32 lowercase hex digits)",
            a.instance
        );
    }
    let clock = SystemClock;
    let host = Host::open(cfg.state_dir()?, cfg.hooks.clone(), &clock)?;
    let mode = if a.wait {
        SettleMode::Wait
    } else {
        SettleMode::IfFree
    };
    let outcome = host.settle(&a.instance, mode)?;
    let (what, seq) = match &outcome {
        SettleOutcome::NothingOwed => ("nothing_owed", None),
        SettleOutcome::Busy => ("busy", None),
        SettleOutcome::RunningAgain => ("running_again", None),
        SettleOutcome::Recorded { seq, .. } => ("recorded", Some(*seq)),
    };
    let doc = json!({"format": "vmledger-hook-settle/v1", "instance": a.instance, "outcome": what, "seq": seq});
    ctx.out.emit(&doc, || match outcome {
        SettleOutcome::Recorded { seq, disks } => {
            format!("recorded {disks} disk(s) at rest (seq {seq})")
        }
        _ => format!("nothing recorded ({what})"),
    })?;
    Ok(Exit::Ok)
}
