//! The simulated device's button: the terminal, or a fixed answer.

use std::io::BufRead;
use std::sync::mpsc;
use std::time::Duration;

use lnpd_signer_firmware::ui::{Answer, Prompt, Ui};

/// How the button answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Approve {
    /// Ask on the terminal (y/N).
    Ask,
    /// Confirm everything.
    Yes,
    /// Deny everything.
    No,
}

/// The simulator's user interface.
pub struct SimUi {
    mode: Approve,
    timeout: Duration,
    lines: Option<mpsc::Receiver<String>>,
}

impl SimUi {
    /// A button answering per `mode`; "ask" waits `timeout` for a line.
    pub fn new(mode: Approve, timeout: Duration) -> Self {
        let lines = (mode == Approve::Ask).then(|| {
            // Standard input read on its own thread, so a prompt can time out.
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        SimUi {
            mode,
            timeout,
            lines,
        }
    }
}

impl Ui for SimUi {
    fn ask(&mut self, prompt: &Prompt) -> Answer {
        eprintln!("[device display] {}", prompt.text().replace('\n', " | "));
        let answer = match (&self.mode, &self.lines) {
            (Approve::Yes, _) => Answer::Confirm,
            (Approve::No, _) => Answer::Deny,
            (Approve::Ask, Some(lines)) => {
                eprintln!(
                    "[device button] confirm? [y/N] ({} s)",
                    self.timeout.as_secs()
                );
                match lines.recv_timeout(self.timeout) {
                    Ok(l) if l.trim().eq_ignore_ascii_case("y") => Answer::Confirm,
                    Ok(_) => Answer::Deny,
                    Err(_) => Answer::Timeout,
                }
            }
            (Approve::Ask, None) => Answer::Timeout,
        };
        eprintln!("[device button] {answer:?}");
        answer
    }
}
