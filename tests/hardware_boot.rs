//! `boot` records the hardware fingerprint (component digests only) and the drift against
//! the previous boot, plus the root digests of configured trees; `status` shows the last
//! conclusion.

mod common;

use common::Sandbox;
use common::hwfix;
use serde_json::Value;

fn config(sb: &Sandbox, extra: &str) -> std::path::PathBuf {
    let root = sb.join("guest");
    let conf = sb.join("config.toml");
    std::fs::write(
        &conf,
        format!(
            "serial = \"SN-1\"\n[hardware]\nroot = \"{}\"\n{extra}",
            root.display()
        ),
    )
    .unwrap();
    conf
}

fn boot(sb: &Sandbox, conf: &std::path::Path) -> (Value, String) {
    let r = sb.cmd(["boot", "--json", "--config"]).arg(conf).ok();
    (r.json(), r.stderr)
}

fn last_entry(sb: &Sandbox) -> Value {
    let shown = sb
        .cmd(["ledger", "show", "--json", "--tail", "1"])
        .ok()
        .json();
    let entries = shown
        .get("entries")
        .and_then(Value::as_array)
        .cloned()
        .or_else(|| shown.as_array().cloned())
        .unwrap_or_else(|| panic!("unexpected ledger show output: {shown:#}"));
    entries.last().unwrap().clone()
}

fn body(e: &Value) -> &Value {
    e.get("body").unwrap_or(e)
}

#[test]
fn boots_record_hardware_and_drift_and_status_shows_it() {
    let sb = Sandbox::new();
    let fx = hwfix::kvm(&sb.join("guest"));
    let conf = config(&sb, "");

    let (first, _) = boot(&sb, &conf);
    assert!(
        first["hardware_drift"].is_null(),
        "no previous boot: {first:#}"
    );
    let e = last_entry(&sb);
    let hw = &body(&e)["data"]["hardware"];
    assert_eq!(hw["digest"].as_str().unwrap().len(), 64);
    let comps = hw["components"].as_array().unwrap();
    assert_eq!(comps.len(), 13, "{hw:#}");
    for c in comps {
        assert!(
            c.get("value").is_none() && c.get("source").is_none(),
            "digests only: {c}"
        );
        assert_eq!(c["digest"].as_str().unwrap().len(), 64);
    }
    assert!(
        !e.to_string().contains("QEMU Virtual CPU"),
        "no values in the ledger"
    );

    let (second, _) = boot(&sb, &conf);
    assert_eq!(second["hardware_drift"]["conclusion"], "same", "{second:#}");

    // A NIC is added between boots.
    fx.nic(
        "enp2s0",
        "pci0000:00/0000:00:02.1/0000:02:00.0/virtio1",
        "52:54:00:aa:bb:02",
    );
    let r = sb.cmd(["boot", "--config"]).arg(&conf).ok();
    assert!(
        r.stdout.contains("hardware: hardware_changed"),
        "{}",
        r.stdout
    );
    let e = last_entry(&sb);
    let drift = &body(&e)["data"]["hardware_drift"];
    assert_eq!(drift["conclusion"], "hardware_changed");
    assert_eq!(drift["added"], serde_json::json!(["net.enp2s0.mac"]));
    assert_eq!(drift["against_seq"], body(&e)["seq"].as_u64().unwrap() - 1);

    let st = sb
        .cmd(["status", "--json", "--config"])
        .arg(&conf)
        .ok()
        .json();
    assert_eq!(st["hardware_drift"]["conclusion"], "hardware_changed");
    let text = sb.cmd(["status", "--config"]).arg(&conf).ok().stdout;
    assert!(text.contains("hardware hardware_changed"), "{text}");

    // Only the generation ID changes (a snapshot revert).
    fx.vmgenid("9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a");
    let (b, _) = boot(&sb, &conf);
    assert_eq!(b["hardware_drift"]["conclusion"], "snapshot_or_clone");

    // The signed chain is intact with the new data.
    sb.cmd(["ledger", "verify"]).ok();
}

#[test]
fn configured_trees_are_fingerprinted_and_failures_never_block_the_boot() {
    let sb = Sandbox::new();
    hwfix::container(&sb.join("guest"));
    let app = sb.join("app");
    std::fs::create_dir_all(app.join("bin")).unwrap();
    std::fs::write(app.join("bin/run"), "#!/bin/sh\n").unwrap();
    std::fs::write(app.join("debug.log"), "noise").unwrap();
    let conf = config(
        &sb,
        &format!(
            "[fingerprint]\ntrees = [\"{}\", \"{}\"]\nexclude = [\"*.log\"]\nimages = [\"{}\", \"{}\"]\n",
            app.display(),
            sb.join("missing").display(),
            sb.join("disk.raw").display(),
            sb.join("missing.qcow2").display()
        ),
    );
    // A small raw disk image: 5 MiB of a pattern, so two chunks.
    let pattern: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(sb.join("disk.raw"), &pattern).unwrap();
    let (_, stderr) = boot(&sb, &conf);
    assert!(stderr.contains("missing"), "{stderr}");
    assert!(
        stderr.contains("missing.qcow2"),
        "an unreadable configured image is reported: {stderr}"
    );
    let e = last_entry(&sb);
    let images = body(&e)["data"]["images"].as_array().unwrap().clone();
    assert_eq!(images.len(), 2);
    let fp = sb
        .cmd(["fingerprint", "image", "--json"])
        .arg(sb.join("disk.raw"))
        .ok()
        .json();
    assert_eq!(images[0]["content_root"], fp["content_root"]);
    assert_eq!(images[0]["virtual_size"], 5 << 20);
    assert!(
        images[1]["error"]
            .as_str()
            .unwrap()
            .contains("missing.qcow2")
    );
    let trees = body(&e)["data"]["trees"].as_array().unwrap().clone();
    assert_eq!(trees.len(), 2);
    assert_eq!(
        trees[0]["entries"], 2,
        "bin, bin/run; debug.log excluded: {trees:#?}"
    );
    assert_eq!(trees[0]["complete"], true);
    assert!(trees[1]["error"].as_str().unwrap().contains("missing"));

    // The recorded root equals what `fingerprint tree` prints with the same excludes.
    let doc = sb
        .cmd(["fingerprint", "tree", "--json", "--exclude", "*.log"])
        .arg(&app)
        .ok()
        .json();
    assert_eq!(trees[0]["root"], doc["trees"][0]["root"]);

    // Disabling the hardware fingerprint leaves it out.
    let conf2 = sb.join("nohw.toml");
    std::fs::write(&conf2, "[fingerprint]\nhardware = false\n").unwrap();
    sb.cmd(["boot", "--config"]).arg(&conf2).ok();
    assert!(body(&last_entry(&sb))["data"].get("hardware").is_none());
}
