//! A proptest-driven client fuzzes a live gpumuxd's tenant socket (issue #10, what held and
//! must keep holding): 40,000 messages — random bytes, truncated and oversized messages,
//! valid messages out of order (Hello, Reattach, Demand, Drained, Idle in any sequence), stray
//! descriptors — over many connections opened and closed at random. The daemon must not
//! crash, must keep answering, and must leak neither descriptors nor accounting slots.
//!
//! The case count is fixed and the generator seeded: the same 40,000 messages every run.

use gpumux_common::protocol::{ClientMsg, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use gpumux_common::sock;
use gpumux_integration::client::{Client, open_fds};
use gpumux_integration::gpumux::{Gpumux, wait_until};
use gpumux_integration::workloads::GIB;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Messages in the whole run.
const MESSAGES: usize = 40_000;
/// Actions per generated case.
const PER_CASE: usize = 500;

#[derive(Debug, Clone)]
enum Action {
    /// Open a new connection.
    Connect,
    /// Close connection `n` (modulo the open ones).
    Close(usize),
    /// Send on connection `n`: bytes, with `fds` stray descriptors.
    Send {
        conn: usize,
        bytes: Vec<u8>,
        fds: usize,
    },
}

fn message() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop_oneof![
        (0u32..5, any::<u32>()).prop_map(|(v, pid)| ClientMsg::Hello {
            protocol: match v {
                3 => PROTOCOL_VERSION + 1,
                // An older shim still served: later messages are read at its version.
                4 => MIN_PROTOCOL_VERSION,
                _ => PROTOCOL_VERSION,
            },
            pid
        }),
        (0u32..3, 0u32..2048).prop_map(|(v, slot)| ClientMsg::Reattach {
            protocol: PROTOCOL_VERSION + v / 2,
            pid: std::process::id(),
            slot
        }),
        (0u32..20).prop_map(|device| ClientMsg::Demand { device }),
        (0u32..20, any::<u32>(), any::<Option<u64>>()).prop_map(|(device, epoch, busy_ns)| {
            ClientMsg::Drained {
                device,
                epoch,
                busy_ns,
            }
        }),
        (0u32..20, any::<u64>())
            .prop_map(|(device, launches)| ClientMsg::Idle { device, launches }),
    ]
    .prop_map(|m| m.encode());
    prop_oneof![
        4 => valid.clone(),
        // Truncated or extended valid messages.
        2 => (valid.clone(), 0usize..16).prop_map(|(mut b, cut)| { b.truncate(cut); b }),
        1 => (valid, proptest::collection::vec(any::<u8>(), 1..8)).prop_map(|(mut b, x)| { b.extend(x); b }),
        // Random bytes, some of them larger than any message.
        2 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => proptest::collection::vec(any::<u8>(), 1000..3000),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        1 => Just(Action::Connect),
        1 => any::<usize>().prop_map(Action::Close),
        12 => (any::<usize>(), message(), prop_oneof![8 => Just(0usize), 1 => 1usize..4])
            .prop_map(|(conn, bytes, fds)| Action::Send { conn, bytes, fds }),
    ]
}

/// A descriptor to send along (a pipe end: nothing the daemon expects).
fn stray_fd() -> OwnedFd {
    let mut p = [0; 2];
    // SAFETY: pipe2 writes two fresh descriptors into `p`.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are fresh and owned here; the read end is closed at once.
    unsafe {
        drop(OwnedFd::from_raw_fd(p[0]));
        OwnedFd::from_raw_fd(p[1])
    }
}

#[test]
fn forty_thousand_fuzzed_messages_crash_and_leak_nothing() {
    let mut g = Gpumux::start(&[16 * GIB], &[("a", "memory_limit = \"1GiB\"\n")]);
    let socket = g.socket("a");
    let pid = g.daemon_pid().unwrap();
    // Settle, then count the daemon's descriptors.
    std::thread::sleep(Duration::from_millis(200));
    let fds_before = open_fds(pid);
    let mut runner = TestRunner::new_with_rng(
        Config {
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let mut sent = 0usize;
    let mut conns: Vec<Client> = Vec::new();
    let cases = proptest::collection::vec(action(), PER_CASE);
    while sent < MESSAGES {
        let actions = cases
            .new_tree(&mut runner)
            .expect("generate a case")
            .current();
        for a in actions {
            if sent == MESSAGES {
                break;
            }
            match a {
                Action::Connect if conns.len() < 64 => {
                    if let Ok(c) = Client::connect(&socket) {
                        conns.push(c);
                    }
                }
                Action::Connect => {}
                Action::Close(n) if !conns.is_empty() => {
                    let k = n % conns.len();
                    conns.swap_remove(k);
                }
                Action::Close(_) => {}
                Action::Send { conn, bytes, fds } => {
                    if conns.is_empty() {
                        conns.extend(Client::connect(&socket).ok());
                    }
                    let Some(c) = conns.get(conn % conns.len().max(1)) else {
                        continue;
                    };
                    let owned: Vec<OwnedFd> = (0..fds).map(|_| stray_fd()).collect();
                    let borrowed: Vec<_> = owned.iter().map(|f| f.as_fd()).collect();
                    // The daemon may have closed this connection: that is its right.
                    let _closed = sock::send(c.fd.as_fd(), &bytes, &borrowed);
                    sent += 1;
                }
            }
        }
    }
    assert_eq!(sent, MESSAGES);
    drop(conns);
    // No crash, still answering, nothing leaked.
    assert!(
        g.daemon_alive(),
        "gpumuxd died; log tail:\n{}",
        tail(&g.log())
    );
    wait_until(
        Duration::from_secs(10),
        || {
            g.status().is_ok_and(|s| {
                s["tenants"][0]["processes"]
                    .as_array()
                    .is_some_and(Vec::is_empty)
                    && s["tenants"][0]["devices"][0]["memory_used"] == 0
            })
        },
        || format!("slots leaked: {}", g.tenant_status("a")),
    );
    wait_until(
        Duration::from_secs(10),
        || open_fds(pid) <= fds_before,
        || {
            format!(
                "descriptors leaked: {} before, {} after",
                fds_before,
                open_fds(pid)
            )
        },
    );
    // And it still serves a well-behaved process.
    Client::register(&socket).expect("registration after the fuzz run");
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
