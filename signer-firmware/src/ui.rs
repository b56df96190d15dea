//! The device's user interface: a small display and a confirm/deny button.
//! The device asks it before anything only a person may allow: pairing
//! with a new host, payments above the approval threshold
//! (`payment-approval`) and new allow-list entries. A board implements it with its screen and
//! buttons; the simulator with its terminal or a command-line flag.

use alloc::string::String;

/// What the device asks its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// Pair with a host showing the same code.
    Pair {
        /// Six digits, also shown by the host.
        code: String,
    },
    /// Sign a payment above the approval threshold.
    Payment {
        /// The approval id (also in the host's log).
        id: String,
        /// Amount (msat).
        amount_msat: u64,
        /// Payee node id (hex).
        payee: String,
    },
    /// Let funds go to an address, or payments to a payee, besides the wallet.
    Allow {
        /// The address or node id, as the host sent it.
        entry: String,
    },
}

impl Prompt {
    /// The text a display shows (two short lines).
    pub fn text(&self) -> String {
        match self {
            Prompt::Pair { code } => alloc::format!("Pair with host?\ncode {code}"),
            Prompt::Payment {
                amount_msat, payee, ..
            } => alloc::format!(
                "Pay {} sat\nto {}…",
                amount_msat / 1000,
                payee.get(..16).unwrap_or(payee)
            ),
            Prompt::Allow { entry } => alloc::format!("Allow sending to\n{entry}"),
        }
    }
}

/// The user's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Confirmed with the button.
    Confirm,
    /// Denied with the button.
    Deny,
    /// No answer in time: treated as a denial.
    Timeout,
}

/// A display and a confirm/deny button.
pub trait Ui {
    /// Shows `prompt` and waits for the user (a board bounds the wait and
    /// answers [`Answer::Timeout`]).
    fn ask(&mut self, prompt: &Prompt) -> Answer;
}

/// A user who always gives the same answer (tests, unattended simulators).
pub struct Always(pub Answer);

impl Ui for Always {
    fn ask(&mut self, _prompt: &Prompt) -> Answer {
        self.0
    }
}
