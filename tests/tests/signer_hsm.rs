//! The seed sealed by an HSM over PKCS#11 (SoftHSM2, the real module): an
//! unattended start with no passphrase, the key's attributes read from the
//! token by this test on its own, each failure (wrong PIN, missing token,
//! deleted key, altered file) a clear error that changes nothing, and
//! migration passphrase <-> HSM without showing the mnemonic.

use std::ffi::OsStr;
use std::path::Path;

use lnpd_proto::signer::{reply, request};
use lnpd_tests::hsm::{softhsm_module, SoftHsm};
use lnpd_tests::{SignerProcess, TempDir};

const PIN: &str = "4711-user-pin";

fn mnemonic() -> String {
    bip39::Mnemonic::from_entropy(&[7u8; 32])
        .unwrap()
        .to_string()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `info --json`'s node id, failing with the command's error.
fn node_id(signer: &SignerProcess) -> String {
    let out = signer.tool(&["info", "--json"]).unwrap();
    assert!(out.status.success(), "info failed: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["node_id"].as_str().unwrap().to_string()
}

/// A `info` that must fail; returns its error text.
fn info_error(signer: &SignerProcess) -> String {
    let out = signer.tool(&["info"]).unwrap();
    assert!(!out.status.success(), "info succeeded: {}", stdout(&out));
    stderr(&out)
}

/// The node id of a passphrase signer restored from the same mnemonic:
/// what the HSM-sealed one must give.
fn reference_node_id(words: &str) -> String {
    let reference = SignerProcess::init_restored("hsm-ref", words).unwrap();
    node_id(&reference)
}

/// An HSM-sealed signer restored from `words`, on token `token`.
fn hsm_signer(hsm: &SoftHsm, tag: &str, token: &str, words: &str) -> SignerProcess {
    hsm.init_token(token, PIN).unwrap();
    let pin = hsm.pin_file(&format!("{token}.pin"), PIN).unwrap();
    let module = softhsm_module();
    let args: Vec<&OsStr> = vec![
        OsStr::new("--seal"),
        OsStr::new("pkcs11"),
        OsStr::new("--pkcs11-module"),
        module.as_os_str(),
        OsStr::new("--token"),
        OsStr::new(token),
        OsStr::new("--pin-file"),
        pin.as_os_str(),
    ];
    let s = SignerProcess::init_with(TempDir::new(tag), Some(words), &args, hsm.env()).unwrap();
    // No passphrase anywhere: a command that asked for one would fail
    // (the file is gone, standard input is closed).
    std::fs::remove_file(s.passphrase_file()).unwrap();
    s
}

fn seed_path(s: &SignerProcess) -> std::path::PathBuf {
    s.data_dir().join("seed.enc")
}

#[test]
fn hsm_sealed_seed_starts_unattended_and_its_key_stays_in_the_token() {
    let words = mnemonic();
    let expected = reference_node_id(&words);
    let hsm = SoftHsm::new("hsm-start").unwrap();
    let mut signer = hsm_signer(&hsm, "hsm-start-signer", "lnpd-start", &words);

    // The file is the HSM's sealing and holds no clear seed.
    let sealed = std::fs::read(seed_path(&signer)).unwrap();
    assert!(sealed.starts_with(b"LNPDSEAL1"));
    let bip39_seed = bip39::Mnemonic::parse_normalized(&words)
        .unwrap()
        .to_seed("");
    assert!(!sealed
        .windows(16)
        .any(|w| bip39_seed.windows(16).any(|s| s == w)));

    // `info` and `run` open it with no passphrase.
    assert_eq!(node_id(&signer), expected);
    let info = signer.tool(&["info"]).unwrap();
    assert!(
        stdout(&info).contains("sealed by HSM key lnpd-seed-")
            && stdout(&info).contains("lnpd-start"),
        "{}",
        stdout(&info)
    );
    signer.start().unwrap();
    let mut client = signer.client().unwrap();
    let reply = client
        .call(request::Body::GetNodeId(Default::default()))
        .unwrap();
    let reply::Body::GetNodeId(id) = reply else {
        panic!("unexpected reply {reply:?}")
    };
    assert_eq!(hex::encode(&id.node_id), expected);
    assert!(
        signer.log().contains("sealed by HSM key"),
        "{}",
        signer.log()
    );
    signer.kill9();

    // Read by this test through the module on its own: one AES key on the
    // token, sensitive, not extractable, its value not readable.
    std::env::set_var("SOFTHSM2_CONF", hsm.conf());
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    let ctx = Pkcs11::new(softhsm_module()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "lnpd-start")
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&PIN.to_string().into()))
        .unwrap();
    let keys = session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .unwrap();
    assert_eq!(keys.len(), 1, "one key on the token");
    let attrs = session
        .get_attributes(
            keys[0],
            &[
                AttributeType::Extractable,
                AttributeType::Sensitive,
                AttributeType::Token,
                AttributeType::Value,
                AttributeType::Label,
            ],
        )
        .unwrap();
    let mut seen = (None, None, None, false, String::new());
    for a in attrs {
        match a {
            Attribute::Extractable(v) => seen.0 = Some(v),
            Attribute::Sensitive(v) => seen.1 = Some(v),
            Attribute::Token(v) => seen.2 = Some(v),
            Attribute::Value(_) => seen.3 = true,
            Attribute::Label(l) => seen.4 = String::from_utf8_lossy(&l).into_owned(),
            _ => {}
        }
    }
    assert_eq!(seen.0, Some(false), "not extractable");
    assert_eq!(seen.1, Some(true), "sensitive");
    assert_eq!(seen.2, Some(true), "a token object");
    assert!(!seen.3, "the token must not give the key's value");
    assert!(seen.4.starts_with("lnpd-seed-"), "label {}", seen.4);
}

#[test]
fn hsm_failures_are_clear_errors_and_change_nothing() {
    let words = mnemonic();
    let hsm = SoftHsm::new("hsm-fail").unwrap();
    let mut signer = hsm_signer(&hsm, "hsm-fail-signer", "lnpd-fail", &words);
    let good = node_id(&signer);
    let path = seed_path(&signer);
    let sealed = std::fs::read(&path).unwrap();
    let pin = hsm.dir.path.join("lnpd-fail.pin");
    let unchanged = || assert_eq!(std::fs::read(&path).unwrap(), sealed, "seed.enc changed");

    // Wrong PIN: `info` and `run` say so; nothing written.
    std::fs::write(&pin, "not-the-pin\n").unwrap();
    assert!(info_error(&signer).contains("wrong PIN"));
    let err = signer.start().unwrap_err().to_string();
    assert!(err.contains("wrong PIN"), "{err}");
    // Its own exit status: the systemd unit does not restart on it (each
    // start would spend one of the token's PIN tries).
    assert!(err.contains("exit status: 3"), "{err}");
    unchanged();
    std::fs::write(&pin, format!("{PIN}\n")).unwrap();
    assert_eq!(node_id(&signer), good);

    // signer.toml's [seal] is what is used: init wrote it; a missing PIN
    // file, a missing module, no [seal] at all: each named.
    let toml = signer.data_dir().join("signer.toml");
    let config = std::fs::read_to_string(&toml).unwrap();
    assert!(
        config.contains("[seal]") && config.contains(&format!("pin_file = \"{}\"", pin.display())),
        "{config}"
    );
    let module = softhsm_module();
    let module_line = format!("pkcs11_module = \"{}\"", module.display());
    assert!(config.contains(&module_line), "{config}");
    let pin_line = format!("pin_file = \"{}\"", pin.display());
    std::fs::write(
        &toml,
        config.replace(&pin_line, "pin_file = \"/nonexistent/pin\""),
    )
    .unwrap();
    assert!(info_error(&signer).contains("reading the PIN file /nonexistent/pin"));
    std::fs::write(
        &toml,
        config.replace(&module_line, "pkcs11_module = \"/nonexistent/module.so\""),
    )
    .unwrap();
    assert!(info_error(&signer).contains("loading the PKCS#11 module /nonexistent/module.so"));
    let without: String = config
        .lines()
        .filter(|l| !l.starts_with("pkcs11_module") && !l.starts_with("pin_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&toml, without).unwrap();
    assert!(info_error(&signer).contains("signer.toml needs [seal] pkcs11_module and pin_file"));
    std::fs::write(&toml, &config).unwrap();
    unchanged();

    // The token missing: another token store (nothing initialised there).
    let empty = SoftHsm::new("hsm-empty").unwrap();
    let mut elsewhere = std::process::Command::new(lnpd_tests::signer_bin());
    let out = elsewhere
        .args(["info", "--data-dir"])
        .arg(signer.data_dir())
        .env("SOFTHSM2_CONF", empty.conf())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no token labelled \"lnpd-fail\""),
        "{}",
        stderr(&out)
    );
    unchanged();

    // An altered file: a bit of the ciphertext, of the IV, of the token's
    // label (all authenticated).
    let label_at = sealed
        .windows(b"lnpd-fail".len())
        .rposition(|w| w == b"lnpd-fail")
        .unwrap();
    let iv_at = label_at + b"lnpd-fail".len() + 16;
    // The module path recorded in the header is never loaded (the
    // configured one is), and the header is authenticated: a changed
    // path fails the decryption.
    let module_bytes = module.display().to_string().into_bytes();
    let module_at = sealed
        .windows(module_bytes.len())
        .position(|w| w == module_bytes.as_slice())
        .unwrap();
    for (at, expect) in [
        (sealed.len() - 20, "altered"),
        (iv_at, "altered"),
        (label_at + 5, "no token labelled"),
        (module_at + 3, "altered"),
    ] {
        let mut bad = sealed.clone();
        bad[at] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let err = info_error(&signer);
        assert!(err.contains(expect), "byte {at}: {err}");
        assert_eq!(std::fs::read(&path).unwrap(), bad);
    }
    std::fs::write(&path, &sealed).unwrap();
    assert_eq!(node_id(&signer), good);

    // A truncated file.
    std::fs::write(&path, &sealed[..40]).unwrap();
    assert!(info_error(&signer).contains("bad header or truncated"));
    std::fs::write(&path, &sealed).unwrap();

    // The key deleted from the token (by the token's own tool, as an
    // operator would): named, and nothing overwritten.
    let out = std::process::Command::new("softhsm2-util")
        .args(["--delete-token", "--token", "lnpd-fail"])
        .env("SOFTHSM2_CONF", hsm.conf())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hsm.init_token("lnpd-fail", PIN).unwrap();
    let err = info_error(&signer);
    assert!(
        err.contains("is not on token \"lnpd-fail\"") && err.contains("lnpd-seed-"),
        "{err}"
    );
    unchanged();

    // init never overwrites a seed, and a failed HSM init leaves no seed.
    let again = signer.tool(&["init", "--network", "regtest"]).unwrap();
    assert!(stderr(&again).contains("refusing to overwrite"));
    unchanged();
    let fresh = TempDir::new("hsm-fail-init");
    let module = softhsm_module();
    let out = std::process::Command::new(lnpd_tests::signer_bin())
        .args(["init", "--network", "regtest", "--no-show-mnemonic"])
        .args([
            "--seal",
            "pkcs11",
            "--token",
            "lnpd-fail",
            "--pkcs11-module",
        ])
        .arg(&module)
        .arg("--pin-file")
        .arg(hsm.pin_file("wrong.pin", "0000").unwrap())
        .arg("--data-dir")
        .arg(fresh.path.join("signer"))
        .env("SOFTHSM2_CONF", hsm.conf())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wrong PIN"), "{}", stderr(&out));
    assert!(!fresh.path.join("signer/seed.enc").exists());
}

fn reseal(signer: &SignerProcess, args: &[&OsStr]) -> std::process::Output {
    let mut all: Vec<&OsStr> = vec![OsStr::new("reseal")];
    all.extend_from_slice(args);
    let all: Vec<&str> = all.iter().map(|a| a.to_str().unwrap()).collect();
    signer.tool(&all).unwrap()
}

fn to_passphrase(signer: &SignerProcess, new_passphrase_file: &Path) -> std::process::Output {
    reseal(
        signer,
        &[
            OsStr::new("--to"),
            OsStr::new("passphrase"),
            OsStr::new("--kdf-memory-kib"),
            OsStr::new("8192"),
            OsStr::new("--new-passphrase-file"),
            new_passphrase_file.as_os_str(),
        ],
    )
}

fn starts_with(path: &Path, magic: &[u8]) -> bool {
    std::fs::read(path).unwrap().starts_with(magic)
}

#[test]
fn reseal_moves_the_seed_between_passphrase_and_hsm_without_showing_it() {
    let words = mnemonic();
    let first_words: String = words.split(' ').take(3).collect::<Vec<_>>().join(" ");
    let mut signer = SignerProcess::init_restored("hsm-reseal", &words).unwrap();
    let id = node_id(&signer);
    let path = seed_path(&signer);
    let hsm = SoftHsm::new("hsm-reseal-hsm").unwrap();
    hsm.init_token("lnpd-move", PIN).unwrap();
    let pin = hsm.pin_file("move.pin", PIN).unwrap();
    let wrong = hsm.pin_file("wrong.pin", "0000").unwrap();
    let module = softhsm_module();
    // The signer's later commands see the token store.
    signer.set_env(hsm.env());

    // A wrong PIN: refused, the passphrase sealing untouched.
    let before = std::fs::read(&path).unwrap();
    fn to_hsm<'a>(module: &'a Path, pin: &'a Path) -> Vec<&'a OsStr> {
        vec![
            OsStr::new("--to"),
            OsStr::new("pkcs11"),
            OsStr::new("--pkcs11-module"),
            module.as_os_str(),
            OsStr::new("--token"),
            OsStr::new("lnpd-move"),
            OsStr::new("--pin-file"),
            pin.as_os_str(),
        ]
    }
    let out = reseal(&signer, &to_hsm(&module, &wrong));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wrong PIN"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(!signer.data_dir().join("seed.enc.new").exists());

    // Passphrase -> HSM.
    let out = reseal(&signer, &to_hsm(&module, &pin));
    assert!(out.status.success(), "{}", stderr(&out));
    for text in [stdout(&out), stderr(&out)] {
        assert!(!text.contains(&first_words), "mnemonic shown: {text}");
    }
    assert!(stdout(&out).contains("sealed by HSM key"));
    assert!(starts_with(&path, b"LNPDSEAL1"));
    let toml = signer.data_dir().join("signer.toml");
    let config = std::fs::read_to_string(&toml).unwrap();
    assert!(
        config.contains("[seal]") && config.contains("pkcs11_module"),
        "{config}"
    );
    assert!(
        config.contains("network = \"regtest\""),
        "the rest kept: {config}"
    );
    // Now opened without the passphrase (the file is gone).
    let passphrase = std::fs::read(signer.passphrase_file()).unwrap();
    std::fs::remove_file(signer.passphrase_file()).unwrap();
    assert_eq!(node_id(&signer), id);

    // HSM -> passphrase: an empty new passphrase is refused first.
    let empty = hsm.pin_file("empty.pass", "").unwrap();
    let sealed = std::fs::read(&path).unwrap();
    let out = to_passphrase(&signer, &empty);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("empty passphrase"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&path).unwrap(), sealed);
    let new_pass = hsm.pin_file("new.pass", "another passphrase").unwrap();
    let out = to_passphrase(&signer, &new_pass);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("old key:"), "{}", stdout(&out));
    for text in [stdout(&out), stderr(&out)] {
        assert!(!text.contains(&first_words), "mnemonic shown: {text}");
    }
    assert!(starts_with(&path, b"LNPDSEED1"));
    let config = std::fs::read_to_string(signer.data_dir().join("signer.toml")).unwrap();
    assert!(!config.contains("[seal]"), "{config}");
    // The old passphrase no longer opens it; the new one does.
    std::fs::write(signer.passphrase_file(), &passphrase).unwrap();
    assert!(info_error(&signer).contains("wrong passphrase"));
    std::fs::copy(&new_pass, signer.passphrase_file()).unwrap();
    assert_eq!(node_id(&signer), id);
}
