//! Integration tests of mvm-term (one test binary): the real guest agent
//! run on the host, the `mvm-tty` client, and a real terminal driven with
//! tmux as a person would.

mod common;
mod tmux;
