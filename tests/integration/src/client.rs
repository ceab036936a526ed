//! A tenant process that speaks the socket protocol itself, without the shim: what a hostile
//! or broken process can send the daemon, and what it can do with the descriptors it gets.

use anyhow::{Context, Result, bail};
use gpumux_common::protocol::{ClientMsg, MAX_MESSAGE, PROTOCOL_VERSION, ServerMsg};
use gpumux_common::shm::{AccountingSegment, ControlSegment, SegmentView};
use gpumux_common::sock;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// A raw connection to a tenant socket.
pub struct Client {
    pub fd: OwnedFd,
}

/// A raw client the daemon registered, with the segments it was handed.
pub struct Registered {
    pub client: Client,
    pub slot: usize,
    pub control_fd: OwnedFd,
    pub accounting_fd: OwnedFd,
    pub control: SegmentView<ControlSegment>,
    pub accounting: SegmentView<AccountingSegment>,
}

impl Client {
    pub fn connect(socket: &Path) -> std::io::Result<Client> {
        Ok(Client {
            fd: sock::connect(socket)?,
        })
    }

    pub fn send(&self, msg: &ClientMsg) -> std::io::Result<()> {
        sock::send(self.fd.as_fd(), &msg.encode(), &[])
    }

    /// Receives one message (waiting up to `timeout`), with the descriptors that came along.
    pub fn recv(&self, timeout: Duration) -> Result<(ServerMsg, Vec<OwnedFd>)> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: setsockopt with a valid timeval of the stated size.
        unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        let mut buf = [0u8; MAX_MESSAGE];
        let (n, fds) = sock::recv(self.fd.as_fd(), &mut buf, 0).context("no answer")?;
        if n == 0 {
            bail!("the daemon closed the connection");
        }
        Ok((ServerMsg::decode(&buf[..n])?, fds))
    }

    /// Connects and registers (`Hello`), mapping the segments like the shim does.
    pub fn register(socket: &Path) -> Result<Registered> {
        let client = Client::connect(socket).context("connect")?;
        client.send(&ClientMsg::Hello {
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
        })?;
        let (msg, mut fds) = client.recv(Duration::from_secs(10))?;
        let ServerMsg::Welcome { slot, .. } = msg else {
            bail!("registration answered {msg:?}");
        };
        if fds.len() != 2 {
            bail!("welcome came with {} descriptors", fds.len());
        }
        let accounting_fd = fds.pop().expect("two");
        let control_fd = fds.pop().expect("two");
        let control = SegmentView::open(control_fd.as_fd(), false)?;
        let accounting = SegmentView::open(accounting_fd.as_fd(), true)?;
        Ok(Registered {
            client,
            slot: slot as usize,
            control_fd,
            accounting_fd,
            control,
            accounting,
        })
    }
}

/// Registration round trip (`Hello` → `Welcome`) of a fresh connection, in seconds.
pub fn registration_latency(socket: &Path) -> Result<f64> {
    let t = std::time::Instant::now();
    let r = Client::register(socket)?;
    let s = t.elapsed().as_secs_f64();
    drop(r);
    Ok(s)
}

/// The number of descriptors a process has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A registered raw client standing in for a process that launches on device 0: it can want
/// the slice (counts a waiting thread and sends `Demand`, as the shim's gate does) and answers
/// revocations at once (as the shim's watcher does).
pub struct SliceUser(pub Registered);

impl SliceUser {
    fn want(&self, on: bool) {
        self.0.accounting.devices[0]
            .waiting
            .store(u32::from(on), std::sync::atomic::Ordering::SeqCst);
        if on {
            // A full socket buffer only delays the demand: the counter is what counts.
            let _delayed = self.0.client.send(&ClientMsg::Demand { device: 0 });
        }
    }

    fn granted(&self) -> bool {
        self.0.control.devices[0]
            .slice
            .load(std::sync::atomic::Ordering::SeqCst)
            & gpumux_common::shm::SLICE_GRANTED
            != 0
    }

    /// Answers pending revocations with `Drained`.
    fn serve(&self) {
        let mut buf = [0u8; MAX_MESSAGE];
        while let Ok((n, _)) = sock::recv(self.0.client.fd.as_fd(), &mut buf, libc::MSG_DONTWAIT) {
            if n == 0 {
                return;
            }
            if let Ok(ServerMsg::Revoke { device, epoch }) = ServerMsg::decode(&buf[..n]) {
                self.want(false);
                // Nothing measured: the daemon charges the slice's wall time.
                let _closed = self.0.client.send(&ClientMsg::Drained {
                    device,
                    epoch,
                    busy_ns: None,
                });
            }
        }
    }
}

/// Median time for `a` to get device 0's slice away from `b` and back (each wants in turn,
/// `rounds` times): what the daemon's loop adds to a hand-over shows in it.
pub fn slice_handover_latency(a: &SliceUser, b: &SliceUser, rounds: usize) -> Result<f64> {
    let mut times = Vec::new();
    for k in 0..rounds * 2 {
        let (x, y) = if k % 2 == 0 { (a, b) } else { (b, a) };
        std::thread::sleep(Duration::from_millis(20));
        let t = std::time::Instant::now();
        x.want(true);
        while !x.granted() {
            y.serve();
            x.serve();
            if t.elapsed() > Duration::from_secs(10) {
                bail!("no slice hand-over in 10 s");
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        times.push(t.elapsed().as_secs_f64());
        x.want(false);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
