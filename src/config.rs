//! Configuration: where state lives and the settings every command reads, resolved in
//! layers: built-in defaults < config file (TOML) < `VMLEDGER_*` environment variables <
//! command-line flags.
//!
//! The config file is `/etc/vmledger/config.toml` when running as root, otherwise
//! `$XDG_CONFIG_HOME/vmledger/config.toml` (fallback `~/.config/vmledger/config.toml`);
//! `--config FILE` overrides. A missing default file is fine; a missing `--config` file is
//! an error. Unknown keys are errors that name the key and the file. Environment variables
//! are read by exact name (the table in [`ENV_VARS`]); other `VMLEDGER_*` names are ignored.
//!
//! This module only reads. It owns no state and never writes a file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Every environment variable vmledger reads, and what it sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    (
        "VMLEDGER_STATE_DIR",
        "state directory (same as --state-dir)",
    ),
    ("VMLEDGER_CONFIG", "config file (same as --config)"),
    (
        "VMLEDGER_SERIAL",
        "serial used when a sealed image first boots",
    ),
    (
        "VMLEDGER_SERVICE_URL",
        "licensing service URL ([service] url)",
    ),
    (
        "VMLEDGER_SERVICE_KEY",
        "licensing service public key ([service] public_key)",
    ),
    (
        "VMLEDGER_GRACE_DAYS",
        "days from an overdue check-in to the lock ([license] grace_days)",
    ),
    (
        "VMLEDGER_WARN_DAYS",
        "days before SLA end that warnings start ([license] warn_days)",
    ),
    (
        "VMLEDGER_SLA_GRACE_DAYS",
        "days from SLA end to permanent disable ([license] sla_grace_days)",
    ),
    (
        "VMLEDGER_DB",
        "licensing service database (same as --db; [server] db)",
    ),
];

/// Errors while locating or reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}={value:?}: {message}")]
    Env {
        name: &'static str,
        value: String,
        message: String,
    },
    #[error(
        "cannot find a home directory for the state dir: set HOME, XDG_STATE_HOME, VMLEDGER_STATE_DIR or pass --state-dir"
    )]
    NoHome,
}

/// The config file as written. Every table rejects unknown keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Serial number used when a sealed image first boots without an identity.
    pub serial: Option<String>,
    /// State directory (overridden by `VMLEDGER_STATE_DIR` and `--state-dir`).
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub service: ServiceSection,
    #[serde(default)]
    pub license: LicenseSection,
    #[serde(default)]
    pub watch: WatchSection,
    #[serde(default)]
    pub hardware: HardwareSection,
    #[serde(default)]
    pub fingerprint: FingerprintSection,
    /// `[server]`: the licensing service (`vmledger serve`, `service`, `admin`).
    #[serde(default)]
    pub server: crate::service::ServerSection,
    /// `[hooks]`: the hypervisor hooks and the duplicate-start guard.
    #[serde(default)]
    pub hooks: crate::hooks::HooksSection,
}

/// `[watch]`: configuration paths `vmledger watch` guards while locked.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct WatchSection {
    /// Files or directories to watch when `vmledger watch` is given no paths.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Put blocked changes back (like `vmledger watch --restore`).
    #[serde(default)]
    pub restore: bool,
}

/// `[service]`: where the appliance checks in.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// Licensing service URL; overrides the one stored by `init --service`.
    pub url: Option<String>,
    /// The service's Ed25519 public key (standard base64 of the raw 32 bytes).
    pub public_key: Option<String>,
}

/// `[license]`: the countdown lengths.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct LicenseSection {
    pub grace_days: Option<u32>,
    pub warn_days: Option<u32>,
    pub sla_grace_days: Option<u32>,
}

/// `[hardware]`: the matching policy for hardware fingerprints and where the guest's
/// facts are read.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HardwareSection {
    /// `any`, `two`, `most` (default) or `all`.
    pub strategy: Option<String>,
    /// Component names or globs that must match (e.g. `["smbios.uuid", "net.*.mac"]`).
    pub deal_breakers: Option<Vec<String>>,
    /// Root directory of the guest's `/sys`, `/proc`, `/etc` (default `/`).
    pub root: Option<PathBuf>,
}

/// `[fingerprint]`: what `boot` fingerprints and records.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FingerprintSection {
    /// Record the hardware fingerprint and its drift at boot (default true).
    pub hardware: Option<bool>,
    /// Directory trees whose root digests `boot` records.
    pub trees: Option<Vec<PathBuf>>,
    /// `--exclude` globs applied to `trees`.
    pub exclude: Option<Vec<String>>,
    /// Disk images whose content roots `boot` records.
    pub images: Option<Vec<PathBuf>>,
}

/// Hardware settings with defaults applied and the policy validated.
#[derive(Debug, Clone)]
pub struct Hardware {
    pub policy: crate::fingerprint::hardware::Policy,
    pub root: PathBuf,
}

/// Boot-time fingerprinting settings with defaults applied.
#[derive(Debug, Clone, Default)]
pub struct Fingerprinting {
    pub hardware: bool,
    pub trees: Vec<PathBuf>,
    pub exclude: Vec<String>,
    pub images: Vec<PathBuf>,
}

/// Flags that override everything else (`state_dir` and `config` already merged with
/// `VMLEDGER_STATE_DIR`/`VMLEDGER_CONFIG` by `cli::GlobalArgs::with_env`, which keeps flags
/// above the environment and treats empty variables as unset).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub serial: Option<String>,
}

/// The resolved configuration every command reads.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// `None` when no default could be derived (no HOME); see [`Config::state_dir`].
    state_dir: Option<PathBuf>,
    pub serial: Option<String>,
    pub service: ServiceSection,
    pub license: License,
    pub watch: WatchSection,
    pub hardware: Hardware,
    pub fingerprint: Fingerprinting,
    /// The licensing service's settings, as written (defaults applied by the service).
    pub server: crate::service::ServerSection,
    /// The hypervisor hooks' settings, with defaults applied.
    pub hooks: crate::hooks::HookSettings,
}

/// License countdown settings with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct License {
    pub grace_days: u32,
    pub warn_days: u32,
    pub sla_grace_days: u32,
}

impl Default for License {
    fn default() -> Self {
        License {
            grace_days: 7,
            warn_days: 30,
            sla_grace_days: 14,
        }
    }
}

/// Where the process gets its environment from (the real one, or a map in tests).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// True when running with effective uid 0: system-wide defaults apply.
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Config {
    /// Resolve the configuration from the real environment.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::resolve(overrides, &ProcessEnv, running_as_root())
    }

    /// Resolve the configuration: defaults < file < environment < flags.
    pub fn resolve(
        overrides: &Overrides,
        env: &dyn Env,
        root: bool,
    ) -> Result<Config, ConfigError> {
        let (config_file, file) = match &overrides.config {
            Some(path) => (Some(path.clone()), read_file(path)?),
            None => {
                let path = default_config_path(env, root);
                match path {
                    Some(p) if p.exists() => (Some(p.clone()), read_file(&p)?),
                    _ => (None, FileConfig::default()),
                }
            }
        };

        let state_dir = match overrides.state_dir.clone() {
            Some(d) => Some(d),
            None => match env_path(env, "VMLEDGER_STATE_DIR") {
                Some(d) => Some(d),
                None => match file.state_dir.clone() {
                    Some(d) => Some(d),
                    None => default_state_dir(env, root).ok(),
                },
            },
        };

        let serial = overrides
            .serial
            .clone()
            .or_else(|| env.var("VMLEDGER_SERIAL"))
            .or(file.serial.clone());

        let mut service = file.service.clone();
        if let Some(url) = env.var("VMLEDGER_SERVICE_URL") {
            service.url = Some(url);
        }
        if let Some(key) = env.var("VMLEDGER_SERVICE_KEY") {
            service.public_key = Some(key);
        }

        let d = License::default();
        let days = |name: &'static str, key: &str, from_file: Option<u32>, default: u32| {
            license_days(env, name, key, from_file, config_file.as_deref(), default)
        };
        let license = License {
            grace_days: days(
                "VMLEDGER_GRACE_DAYS",
                "grace_days",
                file.license.grace_days,
                d.grace_days,
            )?,
            warn_days: days(
                "VMLEDGER_WARN_DAYS",
                "warn_days",
                file.license.warn_days,
                d.warn_days,
            )?,
            sla_grace_days: days(
                "VMLEDGER_SLA_GRACE_DAYS",
                "sla_grace_days",
                file.license.sla_grace_days,
                d.sla_grace_days,
            )?,
        };

        let (hardware, fingerprint) = resolve_fingerprinting(&file, config_file.as_deref())?;
        let hooks = crate::hooks::HookSettings::from_section(&file.hooks).map_err(|message| {
            ConfigError::Parse {
                path: config_file.clone().unwrap_or_default(),
                message,
            }
        })?;

        Ok(Config {
            config_file,
            state_dir,
            serial,
            service,
            license,
            watch: file.watch.clone(),
            hardware,
            fingerprint,
            server: file.server,
            hooks,
        })
    }
}

impl Config {
    /// The state directory, or an error saying how to set one.
    pub fn state_dir(&self) -> Result<&Path, ConfigError> {
        self.state_dir.as_deref().ok_or(ConfigError::NoHome)
    }
}

/// Validate `[hardware]` and `[fingerprint]` and apply their defaults.
fn resolve_fingerprinting(
    file: &FileConfig,
    path: Option<&Path>,
) -> Result<(Hardware, Fingerprinting), ConfigError> {
    use crate::fingerprint::{hardware::Policy, tree::Excludes};
    let bad = |message: String| ConfigError::Parse {
        path: path.map(Path::to_path_buf).unwrap_or_default(),
        message,
    };
    let h = &file.hardware;
    let strategy = match &h.strategy {
        Some(s) => s
            .parse()
            .map_err(|e| bad(format!("[hardware] strategy: {e}")))?,
        None => Default::default(),
    };
    let policy = Policy::new(strategy, h.deal_breakers.clone().unwrap_or_default())
        .map_err(|e| bad(format!("[hardware] deal_breakers: {e}")))?;
    let f = &file.fingerprint;
    let exclude = f.exclude.clone().unwrap_or_default();
    Excludes::new(&exclude).map_err(|e| bad(format!("[fingerprint] exclude: {e}")))?;
    Ok((
        Hardware {
            policy,
            root: h.root.clone().unwrap_or_else(|| PathBuf::from("/")),
        },
        Fingerprinting {
            hardware: f.hardware.unwrap_or(true),
            trees: f.trees.clone().unwrap_or_default(),
            exclude,
            images: f.images.clone().unwrap_or_default(),
        },
    ))
}

/// Parse a config file, naming the file (and, through the TOML error, the key) on failure.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// `/etc/vmledger/config.toml` as root, else `$XDG_CONFIG_HOME/vmledger/config.toml`
/// (fallback `~/.config/vmledger/config.toml`).
pub fn default_config_path(env: &dyn Env, root: bool) -> Option<PathBuf> {
    if root {
        return Some(PathBuf::from("/etc/vmledger/config.toml"));
    }
    xdg_dir(env, "XDG_CONFIG_HOME", ".config").map(|d| d.join("vmledger/config.toml"))
}

/// `/var/lib/vmledger` as root, else `$XDG_STATE_HOME/vmledger` (fallback
/// `~/.local/state/vmledger`).
pub fn default_state_dir(env: &dyn Env, root: bool) -> Result<PathBuf, ConfigError> {
    if root {
        return Ok(PathBuf::from("/var/lib/vmledger"));
    }
    xdg_dir(env, "XDG_STATE_HOME", ".local/state")
        .map(|d| d.join("vmledger"))
        .ok_or(ConfigError::NoHome)
}

fn xdg_dir(env: &dyn Env, var: &str, fallback: &str) -> Option<PathBuf> {
    // The XDG spec says relative values are invalid and must be ignored.
    env.var(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| env.var("HOME").map(|h| PathBuf::from(h).join(fallback)))
}

fn env_path(env: &dyn Env, name: &str) -> Option<PathBuf> {
    env.var(name).map(PathBuf::from)
}

/// The largest value a `[license]` setting may take locally, and why.
///
/// The grace periods may only be shortened: the defaults are what the vendor sells, and
/// nothing local may lengthen a lease (the vendor grants a longer one through the
/// receipt's `next_checkin_before`) or postpone a disable. `warn_days` only moves when the
/// banner starts warning, so it may be raised, up to a year.
pub fn license_max(key: &str) -> (u32, &'static str) {
    let d = License::default();
    match key {
        "grace_days" => (
            d.grace_days,
            "local settings may only shorten the check-in grace period (the default); the vendor grants a longer lease through the licensing service",
        ),
        "sla_grace_days" => (
            d.sla_grace_days,
            "local settings may only shorten the grace period after the SLA ends (the default); only the vendor can extend an SLA",
        ),
        _ => (
            MAX_WARN_DAYS,
            "warnings can start at most a year before the SLA ends",
        ),
    }
}

/// Largest `[license] warn_days`.
pub const MAX_WARN_DAYS: u32 = 366;

/// One `[license]` setting: environment over file over default, bounded by
/// [`license_max`]; an out-of-range value is an error naming the variable or the file and
/// key.
fn license_days(
    env: &dyn Env,
    name: &'static str,
    key: &str,
    from_file: Option<u32>,
    file: Option<&Path>,
    default: u32,
) -> Result<u32, ConfigError> {
    let (max, why) = license_max(key);
    if let Some(v) = env_u32(env, name)? {
        if v > max {
            return Err(ConfigError::Env {
                name,
                value: v.to_string(),
                message: format!("([license] {key}) at most {max}: {why}"),
            });
        }
        return Ok(v);
    }
    match from_file {
        Some(v) if v > max => Err(ConfigError::Parse {
            path: file.map(Path::to_path_buf).unwrap_or_default(),
            message: format!("[license] {key} = {v}: at most {max}: {why}"),
        }),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

fn env_u32(env: &dyn Env, name: &'static str) -> Result<Option<u32>, ConfigError> {
    match env.var(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| ConfigError::Env {
            name,
            value: v,
            message: "expected a whole number of days".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layering_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "serial = \"FILE\"\nstate_dir = \"/from/file\"\n[license]\ngrace_days = 3\nwarn_days = 10\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(file.clone()),
            ..Default::default()
        };
        let env = [("VMLEDGER_WARN_DAYS", "12"), ("HOME", "/home/u")];
        let c = Config::resolve(&o, &env, false).unwrap();
        assert_eq!(c.state_dir().unwrap(), Path::new("/from/file"));
        assert_eq!(c.serial.as_deref(), Some("FILE"));
        assert_eq!(c.license.grace_days, 3); // file
        assert_eq!(c.license.warn_days, 12); // env beats file
        assert_eq!(c.license.sla_grace_days, 14); // default

        let o = Overrides {
            config: Some(file),
            state_dir: Some("/from/flag".into()),
            serial: Some("FLAG".into()),
        };
        let env = [
            ("VMLEDGER_STATE_DIR", "/from/env"),
            ("VMLEDGER_SERIAL", "ENV"),
        ];
        let c = Config::resolve(&o, &env, false).unwrap();
        assert_eq!(c.state_dir().unwrap(), Path::new("/from/flag"));
        assert_eq!(c.serial.as_deref(), Some("FLAG"));
    }

    #[test]
    fn unknown_keys_name_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[license]\ngrace_dayz = 3\n").unwrap();
        let o = Overrides {
            config: Some(file.clone()),
            ..Default::default()
        };
        let err = Config::resolve(&o, &[("HOME", "/h")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("grace_dayz"), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
    }

    #[test]
    fn default_paths() {
        let env = [("HOME", "/home/u")];
        assert_eq!(
            default_state_dir(&env, false).unwrap(),
            PathBuf::from("/home/u/.local/state/vmledger")
        );
        let env = [("HOME", "/home/u"), ("XDG_STATE_HOME", "/xdg/state")];
        assert_eq!(
            default_state_dir(&env, false).unwrap(),
            PathBuf::from("/xdg/state/vmledger")
        );
        assert_eq!(
            default_state_dir(&env, true).unwrap(),
            PathBuf::from("/var/lib/vmledger")
        );
        assert!(default_state_dir(&[("X", "y")], false).is_err());
    }

    #[test]
    fn hardware_and_fingerprint_tables() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[hardware]\nstrategy = \"all\"\ndeal_breakers = [\"smbios.uuid\", \"net.*.mac\"]\n\
             [fingerprint]\ntrees = [\"/opt/app\"]\nexclude = [\"*.log\"]\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(file.clone()),
            ..Default::default()
        };
        let c = Config::resolve(&o, &[("HOME", "/h")], false).unwrap();
        assert_eq!(c.hardware.policy.strategy.as_str(), "all");
        assert!(c.hardware.policy.is_deal_breaker("net.eth0.mac"));
        assert_eq!(c.hardware.root, PathBuf::from("/"));
        assert!(c.fingerprint.hardware);
        assert_eq!(c.fingerprint.trees, vec![PathBuf::from("/opt/app")]);
        for bad in [
            "[hardware]\nstrategy = \"some\"\n",
            "[hardware]\ndeal_breakers = [\"smbios.uid\"]\n",
            "[fingerprint]\nexclude = [\"[\"]\n",
            "[fingerprint]\ntree = []\n",
        ] {
            std::fs::write(&file, bad).unwrap();
            let err = Config::resolve(&o, &[("HOME", "/h")], false)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&file.display().to_string()), "{err}");
        }
    }

    #[test]
    fn grace_periods_can_only_be_shortened() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let o = Overrides {
            config: Some(file.clone()),
            ..Default::default()
        };
        // Shorter than the defaults, and the defaults themselves, are fine.
        std::fs::write(
            &file,
            "[license]\ngrace_days = 0\nsla_grace_days = 14\nwarn_days = 366\n",
        )
        .unwrap();
        let c = Config::resolve(&o, &[("HOME", "/h")], false).unwrap();
        assert_eq!((c.license.grace_days, c.license.sla_grace_days), (0, 14));
        for (text, key) in [
            ("[license]\ngrace_days = 8\n", "grace_days"),
            ("[license]\nsla_grace_days = 100000\n", "sla_grace_days"),
            ("[license]\nwarn_days = 4000000000\n", "warn_days"),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = Config::resolve(&o, &[("HOME", "/h")], false)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&file.display().to_string()), "{err}");
            assert!(err.contains(&format!("[license] {key}")), "{err}");
        }
        std::fs::write(&file, "").unwrap();
        for (name, value) in [
            ("VMLEDGER_GRACE_DAYS", "8"),
            ("VMLEDGER_SLA_GRACE_DAYS", "100000"),
            ("VMLEDGER_WARN_DAYS", "4000000000"),
        ] {
            let err = Config::resolve(&o, &[("HOME", "/h"), (name, value)], false)
                .unwrap_err()
                .to_string();
            assert!(err.contains(name) && err.contains(value), "{err}");
            assert!(err.contains("at most"), "{err}");
        }
        // The environment wins over the file also when it shortens.
        std::fs::write(&file, "[license]\ngrace_days = 5\n").unwrap();
        let c =
            Config::resolve(&o, &[("HOME", "/h"), ("VMLEDGER_GRACE_DAYS", "2")], false).unwrap();
        assert_eq!(c.license.grace_days, 2);
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = Config::resolve(
            &Overrides::default(),
            &[("HOME", "/h"), ("VMLEDGER_GRACE_DAYS", "soon")],
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("VMLEDGER_GRACE_DAYS"), "{err}");
    }
}
