//! Messages on a tenant's socket (`SOCK_SEQPACKET`: one message per packet).
//!
//! Encoding: little-endian `u32` tag, then the fields in order (`u32`/`u64` LE; strings as a
//! `u32` length and UTF-8 bytes). Small, fixed, allocation-light: the shim decodes these.
//! File descriptors travel beside a message as `SCM_RIGHTS`.

use thiserror::Error;

/// Bumped on any incompatible change to these messages or to `shm::LAYOUT_VERSION`.
///
/// 3: `Footprint` says whether the change is a context creation (`context`).
pub const PROTOCOL_VERSION: u32 = 3;
/// No message is larger than this.
pub const MAX_MESSAGE: usize = 1024;

/// Shim → daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    /// First message of a registration. Followed by `Welcome` (+ control and accounting
    /// segment fds) or `Refused`.
    Hello { protocol: u32, pid: u32 },
    /// A thread wants to launch on `device` but the tenant does not hold the slice.
    Demand { device: u32 },
    /// The process stopped issuing work on `device` for slice `epoch` and its work drained.
    /// `busy_ns`: the device time its work used in the slice, as the process measured it with
    /// events (absent from older shims, or when it could not measure: the daemon then charges
    /// the slice's wall time). An optional trailing field: both forms decode.
    Drained {
        device: u32,
        epoch: u32,
        busy_ns: Option<u64>,
    },
    /// After a daemon restart: a process registered with the previous daemon takes its
    /// accounting `slot` back. Answered like `Hello`.
    Reattach { protocol: u32, pid: u32, slot: u32 },
    /// The process's footprint on `device` changed beyond its allocations (a context created
    /// or destroyed, a module or library loaded or unloaded): measure it. `reserved` bytes of
    /// the slot's reservation were for what now exists (a context, a loaded image): the next
    /// measurement that starts after this message settles them, whenever that is. `seq != 0`:
    /// answer `Measured` with it once such a measurement is recorded. `context` is 1 when the
    /// change is a context the process just created (the growth measured then is what a
    /// context of this tenant takes), else 0.
    Footprint {
        device: u32,
        reserved: u64,
        seq: u32,
        context: u32,
    },
}

/// Daemon → shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// Registration accepted; carries the control (read-only) and accounting segment fds.
    Welcome {
        protocol: u32,
        slot: u32,
        generation: u64,
    },
    /// Registration refused, with a reason to show the user.
    Refused { reason: String },
    /// The tenant's slice on `device` ends: stop issuing work, drain, answer `Drained`.
    Revoke { device: u32, epoch: u32 },
    /// The footprint asked for by `Footprint { seq, .. }` was measured and recorded in the
    /// accounting segment (or could not be measured now: the reservation then stands until a
    /// later measurement settles it).
    Measured { device: u32, seq: u32 },
}

/// A message could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("message truncated")]
    Truncated,
    #[error("unknown message tag {0}")]
    UnknownTag(u32),
    #[error("message has {0} trailing bytes")]
    Trailing(usize),
    #[error("string is not UTF-8")]
    BadString,
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(tag: u32) -> Self {
        let mut w = Writer(Vec::with_capacity(32));
        w.u32(tag);
        w
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        let bytes = &s.as_bytes()[..s.len().min(MAX_MESSAGE - 16)];
        self.u32(bytes.len() as u32);
        self.0.extend_from_slice(bytes);
        self
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ProtocolError> {
        if self.0.len() < n {
            return Err(ProtocolError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn str(&mut self) -> Result<String, ProtocolError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| ProtocolError::BadString)
    }
    fn end(self) -> Result<(), ProtocolError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Trailing(self.0.len()))
        }
    }
}

impl ClientMsg {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ClientMsg::Hello { protocol, pid } => Writer::new(1).u32(*protocol).u32(*pid).0.clone(),
            ClientMsg::Demand { device } => Writer::new(2).u32(*device).0.clone(),
            ClientMsg::Drained {
                device,
                epoch,
                busy_ns,
            } => {
                let mut w = Writer::new(3);
                w.u32(*device).u32(*epoch);
                if let Some(ns) = busy_ns {
                    w.u64(*ns);
                }
                w.0
            }
            ClientMsg::Reattach {
                protocol,
                pid,
                slot,
            } => Writer::new(4).u32(*protocol).u32(*pid).u32(*slot).0.clone(),
            ClientMsg::Footprint {
                device,
                reserved,
                seq,
                context,
            } => Writer::new(5)
                .u32(*device)
                .u64(*reserved)
                .u32(*seq)
                .u32(*context)
                .0
                .clone(),
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader(buf);
        let msg = match r.u32()? {
            1 => ClientMsg::Hello {
                protocol: r.u32()?,
                pid: r.u32()?,
            },
            2 => ClientMsg::Demand { device: r.u32()? },
            3 => ClientMsg::Drained {
                device: r.u32()?,
                epoch: r.u32()?,
                busy_ns: if r.0.is_empty() { None } else { Some(r.u64()?) },
            },
            4 => ClientMsg::Reattach {
                protocol: r.u32()?,
                pid: r.u32()?,
                slot: r.u32()?,
            },
            5 => ClientMsg::Footprint {
                device: r.u32()?,
                reserved: r.u64()?,
                seq: r.u32()?,
                context: r.u32()?,
            },
            t => return Err(ProtocolError::UnknownTag(t)),
        };
        r.end()?;
        Ok(msg)
    }
}

impl ServerMsg {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ServerMsg::Welcome {
                protocol,
                slot,
                generation,
            } => Writer::new(101)
                .u32(*protocol)
                .u32(*slot)
                .u64(*generation)
                .0
                .clone(),
            ServerMsg::Refused { reason } => Writer::new(102).str(reason).0.clone(),
            ServerMsg::Revoke { device, epoch } => {
                Writer::new(103).u32(*device).u32(*epoch).0.clone()
            }
            ServerMsg::Measured { device, seq } => {
                Writer::new(104).u32(*device).u32(*seq).0.clone()
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader(buf);
        let msg = match r.u32()? {
            101 => ServerMsg::Welcome {
                protocol: r.u32()?,
                slot: r.u32()?,
                generation: r.u64()?,
            },
            102 => ServerMsg::Refused { reason: r.str()? },
            103 => ServerMsg::Revoke {
                device: r.u32()?,
                epoch: r.u32()?,
            },
            104 => ServerMsg::Measured {
                device: r.u32()?,
                seq: r.u32()?,
            },
            t => return Err(ProtocolError::UnknownTag(t)),
        };
        r.end()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        for m in [
            ClientMsg::Hello {
                protocol: 1,
                pid: 42,
            },
            ClientMsg::Demand { device: 3 },
            ClientMsg::Reattach {
                protocol: 1,
                pid: 2,
                slot: 3,
            },
            ClientMsg::Drained {
                device: 1,
                epoch: 9,
                busy_ns: None,
            },
            ClientMsg::Drained {
                device: 1,
                epoch: 9,
                busy_ns: Some(41_000_000),
            },
            ClientMsg::Footprint {
                device: 2,
                reserved: 300 << 20,
                seq: 7,
                context: 1,
            },
        ] {
            assert_eq!(ClientMsg::decode(&m.encode()), Ok(m));
        }
        for m in [
            ServerMsg::Welcome {
                protocol: 1,
                slot: 7,
                generation: u64::MAX,
            },
            ServerMsg::Refused {
                reason: "no such tenant ünïcode".into(),
            },
            ServerMsg::Revoke {
                device: 0,
                epoch: 4,
            },
            ServerMsg::Measured { device: 3, seq: 9 },
        ] {
            assert_eq!(ServerMsg::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(ClientMsg::decode(&[]), Err(ProtocolError::Truncated));
        assert_eq!(
            ClientMsg::decode(&[9, 0, 0, 0]),
            Err(ProtocolError::UnknownTag(9))
        );
        let mut m = ClientMsg::Demand { device: 1 }.encode();
        m.push(0);
        assert_eq!(ClientMsg::decode(&m), Err(ProtocolError::Trailing(1)));
        assert_eq!(
            ServerMsg::decode(&[102, 0, 0, 0, 255, 0, 0, 0]),
            Err(ProtocolError::Truncated)
        );
        // Drained: without busy_ns (older shims) or with all 8 bytes of it, nothing between.
        let mut m = ClientMsg::Drained {
            device: 0,
            epoch: 1,
            busy_ns: Some(5),
        }
        .encode();
        assert_eq!(m.len(), 4 + 4 + 4 + 8);
        m.truncate(12 + 3);
        assert_eq!(ClientMsg::decode(&m), Err(ProtocolError::Truncated));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ClientMsg::decode(&bytes);
            let _ = ServerMsg::decode(&bytes);
        }
    }
}
