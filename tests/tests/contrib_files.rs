//! The service files in contrib/ checked without running them (this
//! machine has no systemd as PID 1 and no Docker engine): the systemd units
//! by `systemd-analyze verify` and their hardening; every command line in
//! the units, entrypoints and compose file against the binaries' own
//! `--help` (an unknown flag fails); the Dockerfiles' structure (tagged
//! bases, named stages, files copied that exist, a non-root user) and the
//! compose file's references (build files, services, volumes, networks,
//! secrets).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use lnpd_tests::{bin, TempDir};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The `--help` text of `binary sub...` (clap lists every flag there).
fn help(binary: &str, sub: &[&str]) -> String {
    let out = Command::new(bin(binary))
        .args(sub)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{binary} {sub:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every `--flag` of `args` appears in `binary sub --help`.
fn flags_known(binary: &str, sub: &[&str], args: &[&str], place: &str) {
    let text = help(binary, sub);
    let mut checked = 0;
    for a in args {
        if let Some(flag) = a.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap();
            assert!(
                text.contains(&format!("--{flag}")),
                "{place}: `{binary} {}` has no flag --{flag}",
                sub.join(" ")
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "{place}: no flag found to check in {args:?}");
}

/// `key=value` lines of a unit's sections (continuations joined).
fn unit_entries(text: &str) -> Vec<(String, String)> {
    text.replace("\\\n", " ")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('[') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

#[test]
fn systemd_units_verify_and_are_hardened() {
    let units = [
        ("lnpd-signer.service", "lnpd-signer", "run"),
        ("lnpd.service", "lnpd", ""),
    ];
    let tmp = TempDir::new("contrib-systemd");
    let analyze = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    for (unit, binary, sub) in units {
        let text = read(&format!("contrib/systemd/{unit}"));
        let entries = unit_entries(&text);
        let has = |k: &str, v: &str| entries.iter().any(|(a, b)| a == k && b == v);
        for (k, v) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("PrivateTmp", "yes"),
            ("MemoryDenyWriteExecute", "yes"),
            ("ProtectHome", "yes"),
            ("CapabilityBoundingSet", ""),
        ] {
            assert!(has(k, v), "{unit}: {k}={v} missing");
        }
        if binary == "lnpd-signer" {
            assert!(
                entries.iter().any(|(k, _)| k == "LimitMEMLOCK"),
                "{unit}: LimitMEMLOCK for the locked seed"
            );
            // Not restarted on a PIN the HSM refused (each try spends one).
            assert!(
                has(
                    "RestartPreventExitStatus",
                    &lnpd_signer::seed_hsm::EXIT_PIN.to_string()
                ),
                "{unit}: RestartPreventExitStatus for a refused PIN"
            );
        }
        // The command line: the binary's own flags.
        let exec = &entries.iter().find(|(k, _)| k == "ExecStart").unwrap().1;
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(words[0], format!("/usr/local/bin/{binary}"), "{unit}");
        let sub: Vec<&str> = if sub.is_empty() { vec![] } else { vec![sub] };
        flags_known(binary, &sub, &words[1..], unit);
        // systemd's own check, with the binary where this build put it.
        let copy = tmp.path.join(unit);
        std::fs::write(
            &copy,
            text.replace(
                &format!("/usr/local/bin/{binary} "),
                &format!("{} ", bin(binary).display()),
            ),
        )
        .unwrap();
        if analyze {
            let out = Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(&copy)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && said.trim().is_empty(),
                "systemd-analyze verify {unit}:\n{said}"
            );
        } else {
            println!("systemd-analyze not installed: {unit} checked by parsing only");
        }
    }
}

/// A Dockerfile's instructions, continuations joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    text.replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (i, rest) = l.split_once(' ').unwrap_or((l, ""));
            (i.to_uppercase(), rest.trim().to_string())
        })
        .collect()
}

#[test]
fn dockerfiles_are_well_formed_and_run_as_a_user() {
    const KNOWN: &[&str] = &[
        "FROM",
        "RUN",
        "COPY",
        "WORKDIR",
        "USER",
        "VOLUME",
        "EXPOSE",
        "ENTRYPOINT",
        "CMD",
        "ENV",
        "ARG",
        "LABEL",
    ];
    for (file, binaries) in [
        ("lnpd-signer.Dockerfile", vec!["lnpd-signer"]),
        ("lnpd.Dockerfile", vec!["lnpd", "lnpd-cli"]),
        ("bcoin.Dockerfile", vec![]),
    ] {
        let text = read(&format!("contrib/docker/{file}"));
        let ins = instructions(&text);
        assert_eq!(ins[0].0, "FROM", "{file}: starts with FROM");
        let mut stages = BTreeSet::new();
        let mut user_in_last = None;
        for (i, rest) in &ins {
            assert!(
                KNOWN.contains(&i.as_str()),
                "{file}: unknown instruction {i}"
            );
            match i.as_str() {
                "FROM" => {
                    let image = rest.split_whitespace().next().unwrap();
                    let tag = image.split(':').nth(1);
                    assert!(
                        tag.is_some_and(|t| t != "latest"),
                        "{file}: base image {image} must carry a version tag"
                    );
                    if let Some((_, name)) = rest.split_once(" AS ") {
                        stages.insert(name.trim().to_string());
                    }
                    user_in_last = None;
                }
                "COPY" => {
                    let words: Vec<&str> = rest.split_whitespace().collect();
                    if let Some(from) = words[0].strip_prefix("--from=") {
                        assert!(
                            stages.contains(from),
                            "{file}: COPY from unknown stage {from}"
                        );
                        let built = words[1].rsplit('/').next().unwrap();
                        assert!(
                            binaries.contains(&built),
                            "{file}: copies {built}, not a binary it builds"
                        );
                    } else {
                        for src in &words[..words.len() - 1] {
                            if *src != "." {
                                assert!(
                                    repo().join(src).exists(),
                                    "{file}: COPY {src}: no such file"
                                );
                            }
                        }
                    }
                }
                "RUN" if rest.contains("cargo build") => {
                    for b in &binaries {
                        assert!(rest.contains(&format!("--bin {b}")), "{file}: builds {b}");
                        // The name is a binary of this workspace.
                        assert!(bin(b).exists(), "{file}: {b} is not a workspace binary");
                    }
                }
                "USER" => user_in_last = Some(rest.clone()),
                "ENTRYPOINT" => {
                    assert!(rest.starts_with('['), "{file}: ENTRYPOINT in exec form");
                }
                _ => {}
            }
        }
        let user = user_in_last.unwrap_or_else(|| panic!("{file}: the image must not run as root"));
        assert!(user != "root" && user != "0", "{file}: runs as {user}");
    }
    // The entrypoint scripts: valid sh, and every flag known to the binary.
    for (script, calls) in [
        (
            "signer-entrypoint.sh",
            vec![("lnpd-signer", "init"), ("lnpd-signer", "run")],
        ),
        ("node-entrypoint.sh", vec![("lnpd", "")]),
    ] {
        let path = repo().join("contrib/docker").join(script);
        let ok = Command::new("sh").arg("-n").arg(&path).status().unwrap();
        assert!(ok.success(), "{script}: sh -n");
        let text = std::fs::read_to_string(&path).unwrap().replace("\\\n", " ");
        for (binary, sub) in calls {
            let pattern = if sub.is_empty() {
                format!("{binary} ")
            } else {
                format!("{binary} {sub} ")
            };
            // A command line (not a comment or a message naming it).
            let line = text
                .lines()
                .map(str::trim_start)
                .find(|l| l.starts_with(&pattern) || l.starts_with(&format!("exec {pattern}")))
                .unwrap_or_else(|| panic!("{script}: no `{pattern}`"));
            let args: Vec<&str> = line.split_whitespace().collect();
            let sub: Vec<&str> = if sub.is_empty() { vec![] } else { vec![sub] };
            flags_known(binary, &sub, &args, script);
            // Arguments gathered before the call (`set -- ...`).
            for set in text
                .lines()
                .filter(|l| l.trim_start().starts_with("set -- "))
            {
                let args: Vec<&str> = set.split_whitespace().collect();
                flags_known(binary, &sub, &args, script);
            }
        }
    }
}

fn strs(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        Yaml::Hash(h) => h
            .keys()
            .filter_map(|k| k.as_str().map(String::from))
            .collect(),
        _ => vec![],
    }
}

#[test]
fn compose_file_refers_to_what_exists() {
    let text = read("contrib/docker/compose.yaml");
    let docs = YamlLoader::load_from_str(&text).expect("compose.yaml is YAML");
    let doc = &docs[0];
    let services = &doc["services"];
    let names = strs(services);
    assert_eq!(
        names,
        ["chain", "signer", "node"],
        "one process per container"
    );
    let declared = |section: &str| strs(&doc[section]);
    let compose_dir = repo().join("contrib/docker");
    for name in &names {
        let s = &services[name.as_str()];
        let build = &s["build"];
        let context = compose_dir.join(build["context"].as_str().unwrap());
        let dockerfile = context.join(build["dockerfile"].as_str().unwrap());
        assert!(
            dockerfile.exists(),
            "{name}: {} missing",
            dockerfile.display()
        );
        for dep in strs(&s["depends_on"]) {
            assert!(names.contains(&dep), "{name}: depends on unknown {dep}");
        }
        for net in strs(&s["networks"]) {
            assert!(declared("networks").contains(&net), "{name}: network {net}");
        }
        for secret in strs(&s["secrets"]) {
            assert!(
                declared("secrets").contains(&secret),
                "{name}: secret {secret}"
            );
        }
        for v in strs(&s["volumes"]) {
            let source = v.split(':').next().unwrap();
            assert!(
                declared("volumes").iter().any(|d| d == source),
                "{name}: volume {source}"
            );
        }
    }
    // The commands given to our images: flags of the binaries they run.
    let args = |svc: &str| strs(&services[svc]["command"]);
    let signer_args = args("signer");
    flags_known(
        "lnpd-signer",
        &["run"],
        &signer_args.iter().map(String::as_str).collect::<Vec<_>>(),
        "compose signer",
    );
    let node_args = args("node");
    flags_known(
        "lnpd",
        &[],
        &node_args.iter().map(String::as_str).collect::<Vec<_>>(),
        "compose node",
    );
    // The signer is on an internal network only: not reachable from outside.
    assert_eq!(doc["networks"]["signer"]["internal"].as_bool(), Some(true));
    assert!(services["signer"]["ports"].is_badvalue());
}
