//! Installing the libvirt hook script (`vmledger hook install libvirt`).
//!
//! The script is small: it names the vmledger binary by absolute path (libvirt runs hooks
//! with a minimal environment), optionally the state dir and config file, and passes
//! libvirt's arguments on. Its second line marks it as vmledger's, so installing again
//! updates it and never touches a file someone else wrote. Written atomically, mode 0755.
//!
//! Writes only the one script file (and its directory, when missing).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::HookError;

/// The line that marks a hook script as installed by vmledger.
pub const MARKER: &str = "# vmledger-managed-hook: installed by `vmledger hook install libvirt`; vmledger may update or remove this file";
/// Where libvirt looks for QEMU hook scripts.
pub const LIBVIRT_HOOK_DIR: &str = "/etc/libvirt/hooks/qemu.d";
/// The binary the repository's script names (`hooks/libvirt/qemu.d/vmledger`).
pub const DEFAULT_BIN: &str = "/usr/local/bin/vmledger";

/// What an install did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Installed,
    Updated,
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Installed => "installed",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// Quote for POSIX sh: single quotes, with `'` as `'\''`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The libvirt hook script for `bin`, with the state dir and config file baked in when
/// given (otherwise vmledger's defaults for root apply: `/var/lib/vmledger`,
/// `/etc/vmledger/config.toml`).
pub fn libvirt_script(bin: &Path, state_dir: Option<&Path>, config: Option<&Path>) -> String {
    let mut opts = String::new();
    if let Some(d) = state_dir {
        opts.push_str(&format!(" --state-dir {}", sh_quote(&d.to_string_lossy())));
    }
    if let Some(c) = config {
        opts.push_str(&format!(" --config {}", sh_quote(&c.to_string_lossy())));
    }
    format!(
        "#!/bin/sh
{MARKER}
#
# libvirt QEMU hook (https://libvirt.org/hooks.html): libvirt runs it as
#   NAME OPERATION SUB-OPERATION EXTRA
# with the domain XML on stdin, in a minimal environment, and reads this directory only
# when libvirtd starts (or reloads): restart libvirtd after installing.
# vmledger records the domain's starts and stops in a signed host ledger and refuses to
# start a copy of an appliance that is running (see `vmledger hook --help`).
VMLEDGER={bin}
if [ ! -x \"$VMLEDGER\" ]; then
    echo \"vmledger hook: $VMLEDGER is missing; domain starts are not checked\" >&2
    exit 0
fi
exec \"$VMLEDGER\"{opts} hook libvirt \"$@\"
",
        bin = sh_quote(&bin.to_string_lossy()),
    )
}

/// True when `text` is a script vmledger installed.
pub fn is_ours(text: &str) -> bool {
    text.lines().take(3).any(|l| l == MARKER)
}

/// Install `content` at `path`: create, update our own script, or leave an identical one
/// alone. A file at `path` that vmledger did not write is never overwritten.
pub fn install(path: &Path, content: &str) -> Result<Outcome, HookError> {
    let existing = match fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(HookError::io(path, "reading", e)),
    };
    let outcome = match &existing {
        None => Outcome::Installed,
        Some(b) if b.as_slice() == content.as_bytes() => {
            let mode = fs::metadata(path)
                .map_err(|e| HookError::io(path, "inspecting", e))?
                .permissions()
                .mode();
            if mode & 0o111 == 0o111 {
                return Ok(Outcome::Unchanged);
            }
            Outcome::Updated
        }
        Some(b) if is_ours(&String::from_utf8_lossy(b)) => Outcome::Updated,
        Some(_) => {
            return Err(HookError::Foreign {
                path: path.to_path_buf(),
            });
        }
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| HookError::io(dir, "creating", e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A dot name: libvirt skips nothing by name, but never sees it executable half-written.
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::rename(&tmp, path)?;
        crate::fsutil::sync_dir(dir)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(HookError::io(path, "writing", e));
    }
    Ok(outcome)
}

/// Remove the script vmledger installed at `path`: true when removed, false when there was
/// none. A file vmledger did not write is left alone (an error).
pub fn uninstall(path: &Path) -> Result<bool, HookError> {
    let text = match fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(HookError::io(path, "reading", e)),
    };
    if !is_ours(&text) {
        return Err(HookError::Foreign {
            path: path.to_path_buf(),
        });
    }
    fs::remove_file(path).map_err(|e| HookError::io(path, "removing", e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_script_is_the_default_install() {
        let repo = include_str!("../../hooks/libvirt/qemu.d/vmledger");
        assert_eq!(repo, libvirt_script(Path::new(DEFAULT_BIN), None, None));
    }

    #[test]
    fn quoting_survives_hostile_paths() {
        let s = libvirt_script(
            Path::new("/opt/it's here/vmledger"),
            Some(Path::new("/s $x")),
            None,
        );
        assert!(s.contains(r"VMLEDGER='/opt/it'\''s here/vmledger'"), "{s}");
        assert!(s.contains("--state-dir '/s $x'"), "{s}");
    }

    #[test]
    fn idempotent_and_never_overwrites_a_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("qemu.d/vmledger");
        let a = libvirt_script(Path::new("/bin/a"), None, None);
        assert_eq!(install(&p, &a).unwrap(), Outcome::Installed);
        assert_eq!(install(&p, &a).unwrap(), Outcome::Unchanged);
        let b = libvirt_script(Path::new("/bin/b"), None, None);
        assert_eq!(install(&p, &b).unwrap(), Outcome::Updated);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
        fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        assert!(matches!(install(&p, &a), Err(HookError::Foreign { .. })));
        assert!(matches!(uninstall(&p), Err(HookError::Foreign { .. })));
        assert_eq!(fs::read_to_string(&p).unwrap(), "#!/bin/sh\nexit 0\n");
    }
}
