//! The foundation commands through the real binary: init/boot/status/ledger, global
//! options before or after the command, configuration layering and errors, file modes,
//! exit codes, and exports that validate against `schemas/export.schema.json`.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::schemas::{assert_invalid, assert_valid};
use common::{Cmd, Sandbox, require};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_creates_private_identity_and_refuses_twice() {
    let sb = Sandbox::new();
    let doc = sb.cmd(["init", "--serial", "SN-1", "--json"]).ok().json();
    assert_eq!(doc["format"], "vmledger-init/v1");
    let instance = doc["instance"].as_str().unwrap().to_string();
    assert_eq!(instance.len(), 32);
    assert_eq!(doc["head"]["seq"], 0);

    let st = sb.state();
    assert_eq!(mode(&st), 0o700);
    for f in ["instance.json", "instance.key", "ledger.sqlite"] {
        assert_eq!(mode(&st.join(f)), 0o600, "{f}");
    }

    let r = sb.cmd(["init", "--serial", "SN-2"]).expect(2);
    assert!(r.stderr.contains("already initialised"), "{}", r.stderr);
    assert!(r.stderr.contains(&instance));
    // Nothing changed.
    let doc = sb.cmd(["status", "--json"]).ok().json();
    assert_eq!(doc["serial"], "SN-1");
    assert_eq!(doc["instance"], instance.as_str());
}

#[test]
fn boot_on_a_sealed_image_creates_identity_from_config_serial() {
    let sb = Sandbox::new();
    let cfg = sb.join("config.toml");
    std::fs::write(&cfg, "serial = \"SN-SEALED\"\n").unwrap();
    let doc = sb
        .cmd(["boot", "--json"])
        .env("VMLEDGER_CONFIG", &cfg)
        .ok()
        .json();
    assert_eq!(doc["created"], true);
    assert_eq!(doc["serial"], "SN-SEALED");
    assert_eq!(doc["seq"], 1);
    let doc = sb.cmd(["boot", "--json"]).ok().json();
    assert_eq!(doc["created"], false);
    assert_eq!(doc["seq"], 2);
}

#[test]
fn boot_without_serial_then_register() {
    let sb = Sandbox::new();
    let r = sb.cmd(["boot"]).ok();
    assert!(r.stderr.contains("no serial"), "{}", r.stderr);
    sb.cmd(["init", "--serial", "SN-LATE"]).ok();
    let doc = sb.cmd(["ledger", "show", "--json"]).ok().json();
    let kinds: Vec<&str> = doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["body"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["genesis", "boot", "registered"]);
    // Once set, the serial cannot be changed.
    sb.cmd(["init", "--serial", "SN-OTHER"]).expect(2);
}

#[test]
fn global_options_before_or_after_the_command() {
    let sb = Sandbox::new();
    let dir = sb.join("elsewhere");
    let d = dir.to_str().unwrap();
    Cmd::new(["--state-dir", d, "init", "--serial", "SN-G"]).ok();
    Cmd::new(["--state-dir", d, "ledger", "verify"]).ok();
    Cmd::new(["ledger", "verify", "--state-dir", d]).ok();
    let doc = Cmd::new(["ledger", "--json", "verify", "--state-dir", d])
        .ok()
        .json();
    assert_eq!(doc["ok"], true);
    let doc = Cmd::new(["--json", "--state-dir", d, "status"]).ok().json();
    assert_eq!(doc["serial"], "SN-G");
}

#[test]
fn flags_beat_environment_beats_config_file() {
    let sb = Sandbox::new();
    let cfg = sb.join("c.toml");
    let from_file = sb.join("from-file");
    std::fs::write(
        &cfg,
        format!("state_dir = {:?}\nserial = \"SN-FILE\"\n", from_file),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    // File only (the sandbox sets VMLEDGER_STATE_DIR; remove it).
    let mut cmd = sb.cmd(["--config", c, "boot", "--json"]);
    cmd.cmd.env_remove("VMLEDGER_STATE_DIR");
    let doc = cmd.ok().json();
    assert_eq!(doc["serial"], "SN-FILE");
    assert!(from_file.join("instance.json").exists());
    // Environment beats the file.
    let from_env = sb.join("from-env");
    let doc = sb
        .cmd(["--config", c, "boot", "--json"])
        .env("VMLEDGER_STATE_DIR", &from_env)
        .env("VMLEDGER_SERIAL", "SN-ENV")
        .ok()
        .json();
    assert_eq!(doc["serial"], "SN-ENV");
    assert!(from_env.join("instance.json").exists());
    // Flags beat both.
    let from_flag = sb.join("from-flag");
    let doc = sb
        .cmd(["--config", c, "boot", "--json", "--serial", "SN-FLAG"])
        .env("VMLEDGER_STATE_DIR", &from_env)
        .arg("--state-dir")
        .arg(&from_flag)
        .ok()
        .json();
    assert_eq!(doc["serial"], "SN-FLAG");
    assert!(from_flag.join("instance.json").exists());
}

#[test]
fn non_root_default_state_dir_is_xdg() {
    // Run the real binary as an unprivileged user (CI runs as root): with no --state-dir
    // the state goes to $XDG_STATE_HOME/vmledger, else ~/.local/state/vmledger.
    common::require("setpriv");
    if !nix::unistd::geteuid().is_root() {
        return; // already unprivileged: covered by the plain tests
    }
    let sb = Sandbox::new();
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // A copy of the binary the unprivileged user can reach whatever the checkout's perms.
    let exe = sb.join("vmledger");
    std::fs::copy(common::bin(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = sb.join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = |extra: &[(&str, String)]| {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .args(["boot", "--json"])
            .env_clear()
            .env("HOME", &home)
            .env("PATH", "/usr/bin:/bin");
        for (k, v) in extra {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[]);
    let st = home.join(".local/state/vmledger");
    assert!(st.join("instance.json").exists());
    assert_eq!(mode(&st), 0o700);
    let xdg = home.join("xdg");
    run(&[("XDG_STATE_HOME", xdg.display().to_string())]);
    assert!(xdg.join("vmledger/instance.json").exists());
}

#[test]
fn unknown_config_key_names_key_and_file() {
    let sb = Sandbox::new();
    let cfg = sb.join("bad.toml");
    std::fs::write(&cfg, "serial = \"X\"\n[license]\ngrace_dayz = 3\n").unwrap();
    let r = sb
        .cmd(["--config", cfg.to_str().unwrap(), "status"])
        .expect(2);
    assert!(r.stderr.contains("grace_dayz"), "{}", r.stderr);
    assert!(r.stderr.contains("bad.toml"), "{}", r.stderr);
    // With --json the error is also one JSON document on stdout.
    let r = sb
        .cmd(["--config", cfg.to_str().unwrap(), "status", "--json"])
        .expect(2);
    let doc = r.json();
    assert_eq!(doc["format"], "vmledger-error/v1");
    assert!(doc["error"].as_str().unwrap().contains("grace_dayz"));
    // A missing explicit config file is an error naming it.
    let r = sb
        .cmd(["--config", "/nonexistent/x.toml", "status"])
        .expect(2);
    assert!(r.stderr.contains("/nonexistent/x.toml"));
    // Unrelated VMLEDGER_* variables are ignored; a malformed known one names itself.
    sb.cmd(["init", "--serial", "S"])
        .env("VMLEDGER_FOO", "bar")
        .ok();
    let r = sb
        .cmd(["status"])
        .env("VMLEDGER_GRACE_DAYS", "soon")
        .expect(2);
    assert!(r.stderr.contains("VMLEDGER_GRACE_DAYS"));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    Cmd::new(["no-such-command"]).expect(2);
    Cmd::new(["ledger", "show", "--tail", "x"]).expect(2);
    Cmd::new(["--version"]).ok();
    let r = Cmd::new(["help"]).ok();
    assert!(r.stdout.contains("Exit codes"));
}

#[test]
fn uninitialised_state_says_what_to_do() {
    let sb = Sandbox::new();
    let r = sb.cmd(["status"]).expect(2);
    assert!(r.stderr.contains("vmledger init"), "{}", r.stderr);
    let r = sb.cmd(["ledger", "verify"]).expect(2);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
}

#[test]
fn show_tail_and_export_since() {
    let sb = Sandbox::new();
    sb.cmd(["init", "--serial", "SN-E"]).ok();
    for _ in 0..5 {
        sb.cmd(["boot"]).ok();
    }
    let doc = sb
        .cmd(["ledger", "show", "--tail", "2", "--json"])
        .ok()
        .json();
    let seqs: Vec<u64> = doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["body"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [4, 5]);
    let human = sb.cmd(["ledger", "show"]).ok().stdout;
    assert_eq!(human.lines().count(), 6);
    assert!(human.contains("genesis"));

    // Full export: valid against the schema, self-verifying.
    let bundle = sb.cmd(["ledger", "export"]).ok().json();
    assert_valid("export.schema.json", &bundle);
    assert_eq!(bundle["serial"], "SN-E");
    assert_eq!(bundle["entries"].as_array().unwrap().len(), 6);
    let b: vmledger::ledger::export::Bundle = serde_json::from_value(bundle.clone()).unwrap();
    let pk = vmledger::keys::decode_public_key(&b.public_key, "export").unwrap();
    for w in b.entries.windows(2) {
        vmledger::ledger::entry::check_link(&w[0].body, &w[0].hash, &w[1].body).unwrap();
    }
    for e in &b.entries {
        e.check(Some(&pk)).unwrap();
    }

    // --since and -o.
    let out = sb.join("tail.json");
    let doc = sb
        .cmd([
            "ledger",
            "export",
            "--since",
            "3",
            "-o",
            out.to_str().unwrap(),
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(doc["entries"], 3);
    assert_eq!(mode(&out), 0o600);
    let tail: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_valid("export.schema.json", &tail);
    assert_eq!(tail["entries"][0]["body"]["seq"], 3);

    // The schema is strict: an extra member or a float is rejected.
    let mut bad = bundle.clone();
    bad["entries"][1]["body"]["extra"] = serde_json::json!(1);
    assert_invalid("export.schema.json", &bad);
    let mut bad = bundle;
    bad["entries"][1]["body"]["data"]["x"] = serde_json::json!(1.5);
    assert_invalid("export.schema.json", &bad);
}

#[test]
fn corrupt_settings_file_is_a_clear_error() {
    let sb = Sandbox::new();
    sb.cmd(["init", "--serial", "SN-C"]).ok();
    std::fs::write(sb.state().join("instance.json"), "{garbage").unwrap();
    let r = sb.cmd(["boot"]).expect(2);
    assert!(r.stderr.contains("instance.json"), "{}", r.stderr);
    // The ledger is untouched and still verifies on its own.
    sb.cmd(["ledger", "show"]).ok();
}

/// The secret parts of an instance.key (ring's PKCS#8 v2 document: the 32-byte seed at
/// bytes 16..48, the public key in the last 32) in every printable form that could leak.
fn secret_forms(pkcs8: &[u8]) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    assert_eq!(pkcs8.len(), 83, "unexpected PKCS#8 layout");
    assert_eq!(&pkcs8[14..16], [0x04, 0x20], "seed OCTET STRING header");
    let seed = &pkcs8[16..48];
    let mut forms = vec![
        hex::encode(seed),
        hex::encode_upper(seed),
        STANDARD.encode(seed),
        URL_SAFE_NO_PAD.encode(seed),
        STANDARD.encode(pkcs8),
        hex::encode(pkcs8),
    ];
    // Base64 of the seed embedded in a longer encoding: its 4-character groups at the
    // other two alignments, stripped of the characters that depend on the neighbours.
    for pad in 0..3 {
        let mut shifted = vec![0u8; pad];
        shifted.extend_from_slice(seed);
        let enc = STANDARD.encode(&shifted);
        forms.push(enc[4..enc.len() - 4].to_string());
    }
    forms
}

#[test]
fn key_material_is_never_printed() {
    let sb = Sandbox::new();
    let request = sb.join("request.json");
    let export = sb.join("export.json");
    let runs: Vec<Vec<&str>> = vec![
        vec!["init", "--serial", "SN-K"],
        vec!["init", "--serial", "SN-K"],
        vec!["boot"],
        vec!["status"],
        vec!["gate"],
        vec!["ledger", "show"],
        vec!["ledger", "verify"],
        vec!["ledger", "export"],
        vec!["ledger", "export", "-o", export.to_str().unwrap()],
        vec!["checkin"],
        vec!["checkin", "--request-file", request.to_str().unwrap()],
        vec![
            "init",
            "--service",
            "http://127.0.0.1:9",
            "--service-key",
            "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
        ],
        vec!["checkin", "--timeout", "1"],
        vec!["checkin", "--request-file", request.to_str().unwrap()],
        vec!["status", "--bogus"],
        vec!["--help"],
    ];
    let mut seen = String::new();
    for args in &runs {
        for json in [false, true] {
            let mut a = args.clone();
            if json {
                a.push("--json");
            }
            let r = sb.cmd(&a).run();
            seen.push_str(&format!("{a:?}: {}\n{}\n", r.stdout, r.stderr));
        }
    }
    for f in [&request, &export] {
        if let Ok(text) = std::fs::read_to_string(f) {
            seen.push_str(&text);
        }
    }
    assert!(seen.contains("SN-K"), "the commands ran: {seen}");
    let key = std::fs::read(sb.state().join("instance.key")).unwrap();
    for form in secret_forms(&key) {
        assert!(
            !seen.contains(&form),
            "key material `{form}` was printed:\n{seen}"
        );
    }
}

#[test]
fn orphaned_ledger_is_never_discarded() {
    require("sqlite3");
    // A state dir that lost instance.json but whose ledger has history: neither `boot`
    // nor `init` may remove the ledger or replace instance.key, however the ledger looks.
    type Damage = fn(&std::path::Path);
    let setups: [(&str, Damage); 3] = [
        ("has history", |_| {}),
        ("newer schema", |db| {
            let out = std::process::Command::new("sqlite3")
                .arg(db)
                .arg("PRAGMA user_version=99")
                .output()
                .unwrap();
            assert!(out.status.success());
        }),
        ("not a database", |db| {
            std::fs::write(db, b"this is not an SQLite database, but it is someone's").unwrap()
        }),
    ];
    for (what, damage) in setups {
        let sb = Sandbox::new();
        sb.cmd(["init", "--serial", "SN-O"]).ok();
        sb.cmd(["boot"]).ok();
        sb.cmd(["boot"]).ok();
        let st = sb.state();
        let db = st.join("ledger.sqlite");
        // Checkpoint everything into the database file so it can be compared whole.
        sb.cmd(["ledger", "verify"]).ok();
        let out = std::process::Command::new("sqlite3")
            .arg(&db)
            .arg("PRAGMA wal_checkpoint(TRUNCATE)")
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::remove_file(st.join("instance.json")).unwrap();
        damage(&db);
        let key = std::fs::read(st.join("instance.key")).unwrap();
        let ledger = std::fs::read(&db).unwrap();
        for args in [vec!["boot"], vec!["init", "--serial", "SN-NEW"]] {
            let r = sb.cmd(&args).expect(2);
            assert!(
                r.stderr.contains("no instance.json"),
                "{what}: {}",
                r.stderr
            );
            assert!(r.stderr.contains("restore"), "{what}: {}", r.stderr);
            assert!(
                r.stderr.contains(st.to_str().unwrap()),
                "{what}: {}",
                r.stderr
            );
            assert_eq!(
                std::fs::read(st.join("instance.key")).unwrap(),
                key,
                "{what}"
            );
            assert_eq!(std::fs::read(&db).unwrap(), ledger, "{what}");
            assert!(!st.join("instance.json").exists(), "{what}");
        }
    }

    // What an interrupted init leaves (key and genesis, no instance.json) is completed,
    // keeping the key.
    let sb = Sandbox::new();
    sb.cmd(["init", "--serial", "SN-I"]).ok();
    let st = sb.state();
    std::fs::remove_file(st.join("instance.json")).unwrap();
    let key = std::fs::read(st.join("instance.key")).unwrap();
    let doc = sb.cmd(["boot", "--json"]).ok().json();
    assert_eq!(doc["created"], true);
    assert_eq!(std::fs::read(st.join("instance.key")).unwrap(), key);
    sb.cmd(["ledger", "verify"]).ok();
}

#[test]
fn each_cause_is_printed_once() {
    let sb = Sandbox::new();
    sb.cmd(["init", "--serial", "SN-M"]).ok();
    std::fs::remove_file(sb.state().join("instance.key")).unwrap();
    let os_error = std::io::Error::from_raw_os_error(2).to_string();
    for args in [["status", "--json"], ["boot", "--json"]] {
        let r = sb.cmd(args).expect(2);
        assert!(r.stderr.contains("instance.key"), "{}", r.stderr);
        assert_eq!(r.stderr.matches(&os_error).count(), 1, "{}", r.stderr);
        let doc = r.json();
        assert_eq!(doc["error"].as_str().unwrap().matches(&os_error).count(), 1);
    }
}

#[test]
fn verify_without_instance_key_uses_the_genesis_key() {
    require("sqlite3");
    let sb = Sandbox::new();
    sb.cmd(["init", "--serial", "SN-V"]).ok();
    sb.cmd(["boot"]).ok();
    std::fs::remove_file(sb.state().join("instance.key")).unwrap();
    let r = sb.cmd(["ledger", "verify", "--json"]).ok();
    let doc = r.json();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["entries"], 2);
    assert_eq!(doc["instance_key"], "missing");
    assert!(r.stderr.contains("instance.key is missing"), "{}", r.stderr);
    // The verdict is still the chain's: a damaged entry is exit 1.
    let db = sb.state().join("ledger.sqlite");
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(
            "DROP TRIGGER entries_no_update; UPDATE entries SET sig = 'AAAA' || substr(sig, 5) WHERE seq = 1",
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = sb.cmd(["ledger", "verify", "--json"]).expect(1);
    assert_eq!(r.json()["first_bad"]["seq"], 1);
    assert!(r.stderr.contains("instance.key is missing"), "{}", r.stderr);
}

#[test]
fn empty_environment_variables_count_as_unset() {
    let sb = Sandbox::new();
    let state = sb.join("from-file");
    let cfg = sb.join("c.toml");
    std::fs::write(&cfg, format!("state_dir = {state:?}\n")).unwrap();
    // An empty VMLEDGER_STATE_DIR falls through to the config file's state_dir.
    let doc = sb
        .cmd(["init", "--serial", "SN-ENV", "--json"])
        .env("VMLEDGER_CONFIG", &cfg)
        .env("VMLEDGER_STATE_DIR", "")
        .ok()
        .json();
    assert_eq!(doc["serial"], "SN-ENV");
    assert!(state.join("instance.json").exists());
    // An empty VMLEDGER_CONFIG is no config file at all (not a usage error).
    let doc = sb
        .cmd(["status", "--json", "--state-dir"])
        .arg(&state)
        .env("VMLEDGER_CONFIG", "")
        .ok()
        .json();
    assert_eq!(doc["serial"], "SN-ENV");
}

#[test]
fn usage_errors_with_json_are_one_json_document() {
    for args in [
        vec!["ledger", "show", "--tail", "x", "--json"],
        vec!["--json", "no-such-command"],
        vec!["status", "--json", "--bogus"],
    ] {
        let r = Cmd::new(&args).expect(2);
        let doc = r.json();
        assert_eq!(doc["format"], "vmledger-error/v1", "{args:?}");
        assert_eq!(doc["exit_code"], 2);
        let message = doc["error"].as_str().unwrap();
        assert!(message.starts_with("usage: "), "{message}");
        assert!(!r.stderr.is_empty(), "clap's text stays on stderr");
    }
    let doc = Cmd::new(["ledger", "show", "--tail", "x", "--json"])
        .run()
        .json();
    assert!(doc["error"].as_str().unwrap().contains("--tail"), "{doc}");
    // Without --json, nothing on stdout.
    assert!(Cmd::new(["no-such-command"]).expect(2).stdout.is_empty());
}

#[test]
fn init_on_an_initialised_state_says_so_whatever_the_serial() {
    let sb = Sandbox::new();
    sb.cmd(["init", "--serial", "SN-A"]).ok();
    for serial in ["SN-B", "not a valid serial!", ""] {
        let r = sb.cmd(["init", "--serial", serial]).expect(2);
        assert!(
            r.stderr.contains("already initialised"),
            "{serial:?}: {}",
            r.stderr
        );
    }
}
