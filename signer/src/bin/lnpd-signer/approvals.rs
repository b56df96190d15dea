//! `pending`, `approve`, `deny`: payments waiting for the operator.

use crate::common::expand;
use anyhow::Result;
use lnpd_signer::DataDir;

pub(crate) fn pending(data_dir: &str, json: bool) -> Result<()> {
    use lnpd_signer::approvals::{ApprovalDir, Decision};
    let dir = DataDir(expand(data_dir));
    let list = ApprovalDir::new(dir.approvals()).list()?;
    if list.is_empty() && !json {
        println!("no payment waits for approval");
    }
    for (p, answer) in list {
        let answer = match answer {
            None => "waiting",
            Some(Decision::Approved) => "approved (applied when the node asks again)",
            Some(Decision::Denied) => "denied (applied when the node asks again)",
        };
        if json {
            let mut v = serde_json::to_value(&p)?;
            v["answer"] = answer.split(' ').next().unwrap_or(answer).into();
            println!("{v}");
        } else {
            println!(
                "{}  {} sat  to {}  hash {}  requested {}  declined after {}  {answer}",
                p.id,
                p.amount_msat / 1000,
                p.payee,
                p.payment_hash,
                lnpd_signer::audit::rfc3339::format(p.requested_at),
                lnpd_signer::audit::rfc3339::format(p.deadline)
            );
        }
    }
    Ok(())
}

pub(crate) fn answer(data_dir: &str, id: &str, d: lnpd_signer::approvals::Decision) -> Result<()> {
    let dir = DataDir(expand(data_dir));
    let p = lnpd_signer::approvals::ApprovalDir::new(dir.approvals()).answer_with(id.trim(), d)?;
    println!(
        "{} payment {} of {} sat to {}",
        match d {
            lnpd_signer::approvals::Decision::Approved => "approved",
            lnpd_signer::approvals::Decision::Denied => "denied",
        },
        p.id,
        p.amount_msat / 1000,
        p.payee
    );
    Ok(())
}
