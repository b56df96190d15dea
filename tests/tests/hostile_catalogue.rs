//! The hostile-node suite attacks every rule of the catalogue: each
//! `RuleId` is named in at least one of its tests (which assert it in the
//! refusal), so a rule added without an attack fails here.

use lnpd_signer_core::RuleId;

#[test]
fn every_rule_is_attacked_by_the_hostile_suite() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut sources = String::new();
    for name in [
        "hostile_node.rs",
        "hostile_transactions.rs",
        "hostile_invariants.rs",
    ] {
        sources += &std::fs::read_to_string(dir.join(name)).expect("hostile suite source");
    }
    let missing: Vec<&str> = RuleId::ALL
        .iter()
        .filter(|r| !sources.contains(&format!("RuleId::{r:?}")))
        .map(|r| r.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "rules no hostile test attacks: {missing:?}"
    );
}
