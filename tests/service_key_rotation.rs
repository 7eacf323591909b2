//! Service key rotation, end to end: `vmledger service key rotate|activate|retire` on a
//! real `vmledger serve` with the real agent binary (copies that follow the rotation, a
//! copy that slept through it, a stale copy after the old key was retired, an old-key
//! receipt from a response file), and the agent's side against hand-made receipts (an
//! announcement whose key id does not match its key, the config file's pin).

mod common;

use common::Sandbox;
use common::service::{Copy, RealTime, Reply, ServeProc, init_db, receipt, sla, validate};
use common::vendor::{Answer, Vendor, entries_of, faked, write_json};
use serde_json::Value;
use vmledger::keys::{self, PUBLIC_KEY_LEN, SigningKey};
use vmledger::protocol::{AnnouncedKey, CheckinRequest, Receipt, Status, key_id};

const SERIAL: &str = "SN-ROT";
const CODE: &str = "ROTATE-CODE-1";

fn key_cmd(sb: &Sandbox, db: &std::path::Path, args: &[&str]) -> Value {
    let mut argv = vec!["service", "key"];
    argv.extend(args);
    argv.push("--json");
    let doc = sb.cmd(argv).arg("--db").arg(db).ok().json();
    validate(
        if args.is_empty() {
            "service-key"
        } else {
            "service-key-change"
        },
        &doc,
    );
    doc
}

fn state_of(doc: &Value, id: &str) -> String {
    doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == id)
        .unwrap_or_else(|| panic!("no key {id} in {doc}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn raw_key(b64: &str) -> [u8; PUBLIC_KEY_LEN] {
    keys::decode_public_key(b64, "key").unwrap()
}

/// The `data` of every entry of `kind` in a copy's ledger.
fn data_of(c: &Copy, kind: &str) -> Vec<Value> {
    let ledger = c.instance().ledger().unwrap();
    ledger
        .entries_from(0)
        .unwrap()
        .into_iter()
        .filter(|e| e.body.kind == kind)
        .map(|e| Value::Object(e.body.data))
        .collect()
}

#[test]
fn rotation_through_the_real_service() {
    let sb = Sandbox::new();
    let (db, k1) = init_db(&sb);
    let id1 = key_id(&k1);
    sla(&sb, &db, SERIAL, "2099-12-31", CODE);
    let serve = ServeProc::start(&sb, &db, None, &["--no-alerts"]);
    let mut a = Copy::init(&sb, "a", SERIAL, &serve.url, &k1, Some(CODE), &RealTime);
    let mut b = Copy::init(&sb, "b", SERIAL, &serve.url, &k1, Some(CODE), &RealTime);
    for c in [&a, &b] {
        let r = c.checkin(&RealTime);
        assert_eq!(receipt(&r).body.key_id, id1);
        assert_eq!(receipt(&r).body.announce_key, None);
    }
    // A backup of `a` taken before the rotation, and a request file `a` writes then (it
    // names only the key it trusts now).
    let backup = a.copy_to(&sb, "a-backup");
    let req1 = sb.join("req1.json");
    a.ok(
        &RealTime,
        &["checkin", "--request-file", req1.to_str().unwrap()],
    );
    let r1: CheckinRequest = serde_json::from_slice(&std::fs::read(&req1).unwrap()).unwrap();
    assert_eq!(r1.body.service_keys, Some(vec![id1.clone()]));

    // 1. rotate: the successor is announced under the active key.
    let rot = key_cmd(&sb, &db, &["rotate"]);
    let id2 = rot["key"]["key_id"].as_str().unwrap().to_string();
    let k2 = raw_key(rot["key"]["public_key"].as_str().unwrap());
    assert_eq!(key_id(&k2), id2);
    assert_eq!(rot["key"]["state"], "announced");
    assert_eq!(state_of(&rot, &id1), "active");
    let key_file = std::path::PathBuf::from(rot["key"]["key_file"].as_str().unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600,
        "{}",
        key_file.display()
    );
    let r = a.checkin(&RealTime);
    let rc = receipt(&r);
    assert_eq!(rc.body.key_id, id1, "announced keys sign nothing");
    assert_eq!(rc.body.announce_key.as_ref().unwrap().key_id, id2);
    let ann = data_of(&a, "service_key_announced");
    assert_eq!(ann.len(), 1, "{ann:?}");
    assert_eq!(ann[0]["key_id"], id2.as_str());
    assert_eq!(ann[0]["announced_by"], id1.as_str());

    // 2. activate: the running service signs with the successor at once for copies that
    //    trust it, and the copy re-pins.
    let act = key_cmd(&sb, &db, &["activate", &id2]);
    assert_eq!(act["key"]["state"], "active");
    assert_eq!(act["predecessor"]["key_id"], id1.as_str());
    assert_eq!(act["predecessor"]["state"], "previous");
    a.service_key = k2;
    let r = a.checkin(&RealTime);
    assert_eq!(receipt(&r).body.key_id, id2);
    assert_eq!(receipt(&r).body.announce_key, None);
    let rot_entries = data_of(&a, "service_key_rotated");
    assert_eq!(rot_entries.len(), 1, "{rot_entries:?}");
    assert_eq!(rot_entries[0]["from_key_id"], id1.as_str());
    assert_eq!(rot_entries[0]["to_key_id"], id2.as_str());
    let settings = a.instance().settings.service.unwrap();
    assert_eq!(settings.public_key, Some(keys::b64_encode(&k2)));
    assert!(settings.announced_keys.is_empty());
    a.ok(&RealTime, &["ledger", "verify"]);

    // 3. An answer signed by the old key (the vendor answers the request file written
    //    before the rotation: it trusts only the old key, which still signs) is rejected
    //    by the re-pinned copy.
    let resp = sb.join("resp1.json");
    sb.cmd(["admin", "offline-receipt", "--request"])
        .arg(&req1)
        .arg("-o")
        .arg(&resp)
        .arg("--db")
        .arg(&db)
        .ok();
    let old: Receipt = serde_json::from_slice(&std::fs::read(&resp).unwrap()).unwrap();
    assert_eq!(old.body.key_id, id1);
    old.verify(&k1).unwrap();
    let run = a.run(
        &RealTime,
        &[
            "checkin",
            "--json",
            "--response-file",
            resp.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.json()["reason"], "unknown_key", "{}", run.stdout);
    assert!(run.json()["detail"].as_str().unwrap().contains(&id1));

    // 4. A copy that slept through the whole transition (the backup, restored) trusts only
    //    the old key: the service still answers it with that key and announces the
    //    active one, and its next check-in moves it over.
    a.restore_from(&backup);
    a.service_key = k1;
    let r = a.checkin(&RealTime);
    let rc = receipt(&r);
    assert_eq!(rc.body.key_id, id1);
    assert_eq!(rc.body.status, Status::Active, "{:?}", rc.body);
    assert_eq!(rc.body.announce_key.as_ref().unwrap().key_id, id2);
    a.service_key = k2;
    let r = a.checkin(&RealTime);
    assert_eq!(receipt(&r).body.key_id, id2);
    assert_eq!(data_of(&a, "service_key_rotated").len(), 1);

    // 5. retire the old key: it never signs again. A copy that still trusts only it gets a
    //    receipt it cannot verify, and records a failure that says what to do.
    let ret = key_cmd(&sb, &db, &["retire", &id1]);
    assert_eq!(ret["key"]["state"], "retired");
    let r = b.checkin(&RealTime);
    match &r {
        Reply::Failed { reason, detail } => {
            assert_eq!(reason, "unknown_key");
            assert!(detail.contains(&id1) && detail.contains(&id2), "{detail}");
            assert!(detail.contains("--service-key"), "{detail}");
        }
        other => panic!("expected unknown_key, got {other:?}"),
    }
    let status = b.status(&RealTime);
    assert_eq!(status["last_checkin_failure"]["reason"], "unknown_key");
    // The manual re-pin recovers it; nothing it recorded was lost.
    b.ok(
        &RealTime,
        &["init", "--service-key", &keys::b64_encode(&k2)],
    );
    b.service_key = k2;
    let failed_at = data_of(&b, "checkin_failed").len();
    assert_eq!(failed_at, 1);
    let r = b.checkin(&RealTime);
    assert_eq!(receipt(&r).body.key_id, id2);
    let ledger = b.instance().ledger().unwrap();
    let failure = ledger
        .entries_from(0)
        .unwrap()
        .into_iter()
        .find(|e| e.body.kind == "checkin_failed")
        .unwrap();
    assert!(
        receipt(&r).body.acked_seq >= failure.body.seq,
        "the service now holds the recorded failure too"
    );

    let list = key_cmd(&sb, &db, &[]);
    assert_eq!(list["key_id"], id2.as_str());
    assert_eq!(state_of(&list, &id1), "retired");
    assert_eq!(state_of(&list, &id2), "active");
    // Key commands refuse what would break signing, naming the key.
    let r = sb
        .cmd(["service", "key", "retire", &id2, "--db"])
        .arg(&db)
        .run();
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(&id2) && r.stderr.contains("active"),
        "{}",
        r.stderr
    );
    let r = sb
        .cmd(["service", "key", "activate", &id1, "--db"])
        .arg(&db)
        .run();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("retired"), "{}", r.stderr);
    assert_eq!(serve.terminate(), 0);
}

// ---- the agent's side, against hand-made receipts (air-gapped path) ----

const T0: &str = "2030-05-01 10:00:00";

struct Agent {
    sb: Sandbox,
    vendor: Vendor,
    n: u32,
    /// `VMLEDGER_SERVICE_KEY` for the commands (the config's pin), if any.
    config_key: Option<String>,
}

impl Agent {
    fn new() -> Agent {
        let vendor = Vendor::new();
        let sb = Sandbox::new();
        faked(&sb, T0, ["init", "--serial", "SN-9", "--service-key"])
            .arg(vendor.public_key_b64())
            .ok();
        Agent {
            sb,
            vendor,
            n: 0,
            config_key: None,
        }
    }

    fn cmd(&self, args: &[&str]) -> common::Cmd {
        let c = faked(&self.sb, T0, args);
        match &self.config_key {
            Some(k) => c.env("VMLEDGER_SERVICE_KEY", k),
            None => c,
        }
    }

    /// A request file, as the agent writes it.
    fn request(&mut self) -> CheckinRequest {
        self.n += 1;
        let p = self.sb.join(format!("req{}.json", self.n));
        self.cmd(&["checkin", "--request-file", p.to_str().unwrap()])
            .ok();
        self.vendor.read_request(&p)
    }

    /// Answer a fresh request with a receipt signed by `signer` announcing `announce`,
    /// and apply it; returns the run.
    fn exchange(&mut self, signer: &SigningKey, announce: Option<AnnouncedKey>) -> common::Run {
        let req = self.request();
        let acked_before = self.vendor.acked.clone();
        let at = format!("2030-05-01T10:00:{:02}.000Z", self.n);
        let mut body = self.vendor.answer(&req, &at, Answer::default()).body;
        body.key_id = key_id(&signer.public_key());
        body.announce_key = announce;
        let r = Receipt::sign(body, signer).unwrap();
        let p = self.sb.join(format!("resp{}.json", self.n));
        write_json(&p, &r);
        let run = self
            .cmd(&["checkin", "--json", "--response-file", p.to_str().unwrap()])
            .run();
        if run.code != 0 {
            // Rejected: the agent still starts its next request after its old head.
            self.vendor.acked = acked_before;
        }
        run
    }

    fn settings(&self) -> vmledger::identity::ServiceSettings {
        let dir = vmledger::identity::StateDir::new(self.sb.state());
        vmledger::identity::Instance::open(&dir)
            .unwrap()
            .settings
            .service
            .unwrap()
    }
}

fn announcement(k: &SigningKey) -> AnnouncedKey {
    AnnouncedKey {
        key_id: key_id(&k.public_key()),
        public_key: k.public_key_b64(),
    }
}

fn rejected(r: &common::Run, reason: &str) -> String {
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let doc = r.json();
    assert_eq!(doc["reason"], reason, "{}", r.stdout);
    doc["detail"].as_str().unwrap().to_string()
}

#[test]
fn agent_follows_announcements_and_refuses_bad_ones() {
    let mut ag = Agent::new();
    let v1 = SigningKey::from_seed(&[42; 32]);
    let v2 = SigningKey::from_seed(&[43; 32]);
    let (id1, id2) = (key_id(&v1.public_key()), key_id(&v2.public_key()));

    // An announcement whose key id is not its key's: the receipt is refused, loudly, and
    // the key is not trusted.
    let mut bad = announcement(&v2);
    bad.key_id = "0123456789abcdef".into();
    let r = ag.exchange(&v1, Some(bad));
    // A response file that is no usable receipt is an error naming the file and field.
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("resp1.json") && r.stderr.contains("announce_key.key_id"),
        "{}",
        r.stderr
    );
    let failed = entries_of(&ag.sb, "checkin_failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["body"]["data"]["reason"], "malformed");
    assert!(ag.settings().announced_keys.is_empty());
    assert!(entries_of(&ag.sb, "service_key_announced").is_empty());

    // A valid announcement under the pinned key: trusted next to it, named in requests.
    assert_eq!(ag.exchange(&v1, Some(announcement(&v2))).code, 0);
    let ann = entries_of(&ag.sb, "service_key_announced");
    assert_eq!(ann.len(), 1);
    assert_eq!(ann[0]["body"]["data"]["announced_by"], id1.as_str());
    // A receipt signed by a key nobody announced is still refused.
    let mallory = SigningKey::from_seed(&[7; 32]);
    rejected(&ag.exchange(&mallory, None), "unknown_key");

    // The first receipt the announced key signs re-pins it; the old key is then unknown.
    let r = ag.exchange(&v2, None);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let rot = entries_of(&ag.sb, "service_key_rotated");
    assert_eq!(rot.len(), 1);
    assert_eq!(rot[0]["body"]["data"]["from_key_id"], id1.as_str());
    assert_eq!(rot[0]["body"]["data"]["to_key_id"], id2.as_str());
    assert_eq!(ag.settings().public_key, Some(v2.public_key_b64()));
    assert_eq!(ag.settings().superseded_keys, vec![id1.clone()]);
    assert_eq!(ag.request().body.service_keys, Some(vec![id2.clone()]));
    let detail = rejected(&ag.exchange(&v1, None), "unknown_key");
    assert!(detail.contains(&id1) && detail.contains(&id2), "{detail}");

    // A config file that still pins the old key is followed through the rotation it
    // announced itself ...
    ag.config_key = Some(v1.public_key_b64());
    assert_eq!(ag.request().body.service_keys, Some(vec![id2.clone()]));
    assert_eq!(ag.exchange(&v2, None).code, 0);
    // ... while a config key the instance never rotated through is a manual pin that
    // overrides instance.json (the re-pin after a compromise).
    let v3 = SigningKey::from_seed(&[44; 32]);
    ag.config_key = Some(v3.public_key_b64());
    assert_eq!(
        ag.request().body.service_keys,
        Some(vec![key_id(&v3.public_key())])
    );
    rejected(&ag.exchange(&v2, None), "unknown_key");
    assert_eq!(ag.exchange(&v3, None).code, 0);
    ag.cmd(&["ledger", "verify"]).ok();
}
