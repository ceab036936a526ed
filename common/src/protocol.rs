//! Messages on a tenant's socket (`SOCK_SEQPACKET`: one message per packet).
//!
//! Every message is declared once, in [`wire_messages!`] below: its tag, its fields in wire
//! order, and the protocol version that introduced it or each of its fields. The enum, the
//! named tag constants ([`tag`]), encoding and decoding are all derived from that declaration.
//!
//! Encoding: little-endian `u32` tag, then the fields in order (`u32`/`u64` LE; strings as a
//! `u32` length and UTF-8 bytes; an `Option` as a presence byte, 0 or 1, then the value when
//! 1). Small, fixed, allocation-light: the shim decodes these.
//! File descriptors travel beside a message as `SCM_RIGHTS`.
//!
//! # Versions
//!
//! The shim announces its [`PROTOCOL_VERSION`] in `Hello`/`Reattach`; a daemon accepts every
//! version from [`MIN_PROTOCOL_VERSION`] to its own, answers `Welcome` with the shim's version
//! and from then on speaks that version on the connection ([`ClientMsg::decode_for`],
//! [`ServerMsg::encode_for`]). So a daemon upgraded under running processes keeps serving the
//! shims they loaded. A shim newer than the daemon is refused with a clear reason.
//!
//! Changes are additive, and each bumps [`PROTOCOL_VERSION`]:
//! - a new message gets a new tag and `since N` (a message is never sent to a peer older
//!   than it: [`ServerMsg::since`]);
//! - a new field goes at the end of its message with `since N`: at an older version it is not
//!   on the wire and decodes as its type's default.
//!
//! Frozen forever (a peer must read them before any version is agreed): the tag and first
//! field (`protocol`) of `Hello` and `Reattach`, and `Refused { reason }`.

use thiserror::Error;

/// The protocol version this build speaks (bumped by every message or field added).
///
/// 2: `Footprint` and `Measured` (with shared-segment layout 2).
/// 3: `Drained.busy_ns` (the device time the process measured in the slice).
/// 4: `Idle` (a latency-class holder's work is done: `shm::ControlDevice::yield_hint`).
/// 5: `Footprint.context` (whether the change is a context the process just created).
pub const PROTOCOL_VERSION: u32 = 5;
/// The oldest shim protocol a daemon of this build still serves. Raised only when an older
/// shim cannot work with this daemon at all: a change of `shm::LAYOUT_VERSION` (version 2
/// came with layout 2, which a version-1 shim cannot map).
pub const MIN_PROTOCOL_VERSION: u32 = 2;
/// No message is larger than this.
pub const MAX_MESSAGE: usize = 1024;

/// A field type on the wire.
trait Wire: Sized + Default {
    fn put(&self, w: &mut Vec<u8>);
    fn get(r: &mut Reader<'_>) -> Result<Self, ProtocolError>;
}

impl Wire for u32 {
    fn put(&self, w: &mut Vec<u8>) {
        w.extend_from_slice(&self.to_le_bytes());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        Ok(u32::from_le_bytes(r.array()?))
    }
}

impl Wire for u64 {
    fn put(&self, w: &mut Vec<u8>) {
        w.extend_from_slice(&self.to_le_bytes());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        Ok(u64::from_le_bytes(r.array()?))
    }
}

/// Absent at versions older than the field: `None`.
impl<T: Wire> Wire for Option<T> {
    fn put(&self, w: &mut Vec<u8>) {
        match self {
            None => w.push(0),
            Some(v) => {
                w.push(1);
                v.put(w);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        match r.array::<1>()? {
            [0] => Ok(None),
            [1] => Ok(Some(T::get(r)?)),
            [b] => Err(ProtocolError::BadPresence(b)),
        }
    }
}

impl Wire for String {
    fn put(&self, w: &mut Vec<u8>) {
        // Cut to fit a message, at a character boundary.
        let mut end = self.len().min(MAX_MESSAGE - 64);
        while !self.is_char_boundary(end) {
            end -= 1;
        }
        (end as u32).put(w);
        w.extend_from_slice(&self.as_bytes()[..end]);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        let n = u32::get(r)? as usize;
        String::from_utf8(r.take(n)?.to_vec()).map_err(|_| ProtocolError::BadString)
    }
}

/// Reads fields off a received message.
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
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn end(self) -> Result<(), ProtocolError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Trailing(self.0.len()))
        }
    }
}

/// The version a message or field was introduced in: 1 unless declared.
macro_rules! since {
    () => {
        1
    };
    ($v:literal) => {
        $v
    };
}

/// Declares a message enum once and derives its tags, encoding and decoding.
///
/// `Name = TAG [since V] { field: Type [since V], ... }`; `since` defaults to 1. Types are
/// `u32`, `u64`, `String` or `Option` of one of them.
macro_rules! wire_messages {
    (
        $(#[$meta:meta])*
        pub enum $enum:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $tag:ident : $tagval:literal $(since $vsince:literal)? {
                    $(
                        $(#[$fmeta:meta])*
                        $field:ident : $ty:ident $(< $targ:ident >)? $(since $fsince:literal)?
                    ),* $(,)?
                }
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $enum {
            $(
                $(#[$vmeta])*
                $variant { $( $(#[$fmeta])* $field: $ty $(< $targ >)? ),* },
            )*
        }

        impl $enum {
            $(
                #[doc = concat!("Wire tag of `", stringify!($variant), "`.")]
                pub const $tag: u32 = $tagval;
            )*

            /// This message's wire tag.
            pub fn tag(&self) -> u32 {
                match self {
                    $( $enum::$variant { .. } => Self::$tag, )*
                }
            }

            /// The protocol version that introduced this message: never send it to an older peer.
            pub fn since(&self) -> u32 {
                match self {
                    $( $enum::$variant { .. } => since!($($vsince)?), )*
                }
            }

            /// Encodes at this build's [`PROTOCOL_VERSION`].
            pub fn encode(&self) -> Vec<u8> {
                self.encode_for(PROTOCOL_VERSION)
            }

            /// Encodes for a peer speaking `version`: fields newer than it are left out.
            pub fn encode_for(&self, version: u32) -> Vec<u8> {
                let mut w = Vec::with_capacity(32);
                match self {
                    $(
                        #[allow(unused_variables)]
                        $enum::$variant { $($field),* } => {
                            Self::$tag.put(&mut w);
                            $(
                                if since!($($fsince)?) <= version {
                                    $field.put(&mut w);
                                }
                            )*
                        }
                    )*
                }
                w
            }

            /// Decodes a message of this build's [`PROTOCOL_VERSION`].
            pub fn decode(buf: &[u8]) -> Result<Self, ProtocolError> {
                Self::decode_for(buf, PROTOCOL_VERSION)
            }

            /// Decodes a message from a peer speaking `version`: exactly the fields that version
            /// has, newer ones taking their default; messages newer than it are unknown.
            pub fn decode_for(buf: &[u8], version: u32) -> Result<Self, ProtocolError> {
                let mut r = Reader(buf);
                let tag = u32::get(&mut r)?;
                let msg = match tag {
                    $(
                        Self::$tag if (since!($($vsince)?)) <= version => $enum::$variant {
                            $(
                                $field: if since!($($fsince)?) <= version {
                                    Wire::get(&mut r)?
                                } else {
                                    Default::default()
                                },
                            )*
                        },
                    )*
                    t => return Err(ProtocolError::UnknownTag(t)),
                };
                r.end()?;
                Ok(msg)
            }
        }
    };
}

wire_messages! {
    /// Shim → daemon.
    pub enum ClientMsg {
        /// First message of a registration. Followed by `Welcome` (+ control and accounting
        /// segment fds) or `Refused`.
        Hello = HELLO: 1 { protocol: u32, pid: u32 },
        /// A thread wants to launch on `device` but the tenant does not hold the slice.
        Demand = DEMAND: 2 { device: u32 },
        /// The process stopped issuing work on `device` for slice `epoch` and its work drained.
        /// `busy_ns`: the device time its work used in the slice, as the process measured it
        /// with events (None when it could not measure, and from shims older than 3: the
        /// daemon then charges the slice's wall time).
        Drained = DRAINED: 3 { device: u32, epoch: u32, busy_ns: Option<u64> since 3 },
        /// After a daemon restart: a process registered with the previous daemon takes its
        /// accounting `slot` back. Answered like `Hello`; a `Refused` answer means the process
        /// must stop using the GPU.
        Reattach = REATTACH: 4 { protocol: u32, pid: u32, slot: u32 },
        /// The process's footprint on `device` changed beyond its allocations (a context
        /// created or destroyed, a module or library loaded or unloaded): measure it.
        /// `reserved` bytes of the slot's reservation were for what now exists (a context, a
        /// loaded image): the next measurement that starts after this message settles them,
        /// whenever that is. `seq != 0`: answer `Measured` with it once such a measurement is
        /// recorded. `context`: `Some(1)` when the change is a context the process just
        /// created (the growth measured then is what a context of this tenant takes), else
        /// `Some(0)`; `None` from shims older than 5, which asked for `Measured` (`seq != 0`)
        /// only after creating a context ([`ClientMsg::footprint_is_context`]).
        Footprint = FOOTPRINT: 5 since 2 {
            device: u32,
            reserved: u64,
            seq: u32,
            context: Option<u32> since 5,
        },
        /// The process holds the slice on `device` as a latency-class tenant that others wait
        /// for (`ControlDevice::yield_hint`), a synchronize of its just returned and it has
        /// nothing more in flight: if its launch count on the device is still `launches`, the
        /// tenant may have no work left and the daemon can pass the device on now. Sent only
        /// when the hint is set (a daemon that sets it knows this message).
        Idle = IDLE: 6 since 4 { device: u32, launches: u64 },
    }
}

wire_messages! {
    /// Daemon → shim.
    pub enum ServerMsg {
        /// Registration accepted; carries the control (read-only) and accounting segment fds.
        Welcome = WELCOME: 101 { protocol: u32, slot: u32, generation: u64 },
        /// Registration refused, with a reason to show the user.
        Refused = REFUSED: 102 { reason: String },
        /// The tenant's slice on `device` ends: stop issuing work, drain, answer `Drained`.
        Revoke = REVOKE: 103 { device: u32, epoch: u32 },
        /// The footprint asked for by `Footprint { seq, .. }` was measured and recorded in the
        /// accounting segment (or could not be measured now: the reservation then stands until
        /// a later measurement settles it).
        Measured = MEASURED: 104 since 2 { device: u32, seq: u32 },
    }
}

impl ClientMsg {
    /// Whether a `Footprint` (its `seq` and `context` fields) reports a context the process
    /// just created; shims older than protocol 5 do not say, and asked for `Measured` only
    /// then.
    pub fn footprint_is_context(seq: u32, context: Option<u32>) -> bool {
        context.map_or(seq != 0, |c| c != 0)
    }

    /// The protocol a connection's first message (`Hello` or `Reattach`) announces, read
    /// before any version is agreed (their tag and first field never change).
    pub fn announced_protocol(buf: &[u8]) -> Option<u32> {
        let mut r = Reader(buf);
        match u32::get(&mut r).ok()? {
            Self::HELLO | Self::REATTACH => u32::get(&mut r).ok(),
            _ => None,
        }
    }
}

/// Whether a daemon of this build serves a shim speaking `version`, and if not, why.
pub fn check_shim_version(version: u32) -> Result<(), String> {
    if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        Ok(())
    } else if version > PROTOCOL_VERSION {
        Err(format!(
            "the shim speaks protocol {version}, newer than this gpumuxd ({MIN_PROTOCOL_VERSION} to \
             {PROTOCOL_VERSION}): upgrade gpumuxd before the shim"
        ))
    } else {
        Err(format!(
            "the shim speaks protocol {version}, older than this gpumuxd still serves \
             ({MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}): restart the process with the \
             installed shim"
        ))
    }
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
    #[error("presence byte {0} of an optional field is neither 0 nor 1")]
    BadPresence(u8),
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
            ClientMsg::Drained {
                device: 1,
                epoch: 9,
                busy_ns: Some(0),
            },
            ClientMsg::Footprint {
                device: 2,
                reserved: 300 << 20,
                seq: 7,
                context: Some(1),
            },
            ClientMsg::Idle {
                device: 1,
                launches: u64::MAX,
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
    fn tags_are_named_and_distinct() {
        let tags = [
            ClientMsg::HELLO,
            ClientMsg::DEMAND,
            ClientMsg::DRAINED,
            ClientMsg::REATTACH,
            ClientMsg::FOOTPRINT,
            ClientMsg::IDLE,
            ServerMsg::WELCOME,
            ServerMsg::REFUSED,
            ServerMsg::REVOKE,
            ServerMsg::MEASURED,
        ];
        let unique: std::collections::BTreeSet<_> = tags.iter().collect();
        assert_eq!(unique.len(), tags.len());
        assert_eq!(ClientMsg::Demand { device: 0 }.tag(), ClientMsg::DEMAND);
        assert_eq!(
            &ClientMsg::Demand { device: 0 }.encode()[..4],
            &2u32.to_le_bytes()
        );
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
        assert_eq!(
            ServerMsg::decode(&[102, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xfe]),
            Err(ProtocolError::BadString)
        );
        // Drained: a presence byte other than 0/1, or a present value cut short.
        let mut m = ClientMsg::Drained {
            device: 0,
            epoch: 1,
            busy_ns: Some(5),
        }
        .encode();
        assert_eq!(m.len(), 4 + 4 + 4 + 1 + 8);
        m[12] = 2;
        assert_eq!(ClientMsg::decode(&m), Err(ProtocolError::BadPresence(2)));
        m[12] = 1;
        m.truncate(12 + 1 + 3);
        assert_eq!(ClientMsg::decode(&m), Err(ProtocolError::Truncated));
    }

    #[test]
    fn drained_from_a_version_2_shim_is_unmeasured() {
        // A version-2 shim sends no busy_ns: the daemon reads None (charges wall time).
        let v2 = ClientMsg::Drained {
            device: 1,
            epoch: 4,
            busy_ns: Some(7),
        }
        .encode_for(2);
        assert_eq!(v2.len(), 12);
        assert_eq!(
            ClientMsg::decode_for(&v2, 2),
            Ok(ClientMsg::Drained {
                device: 1,
                epoch: 4,
                busy_ns: None,
            })
        );
        // Version-3 bytes are not read as version 2, nor the other way round.
        let v3 = ClientMsg::Drained {
            device: 1,
            epoch: 4,
            busy_ns: None,
        }
        .encode();
        assert_eq!(
            ClientMsg::decode_for(&v3, 2),
            Err(ProtocolError::Trailing(1))
        );
        assert_eq!(ClientMsg::decode(&v2), Err(ProtocolError::Truncated));
    }

    #[test]
    fn footprint_from_an_older_shim_is_a_context_when_it_asked_for_measured() {
        // A version-3 shim sends no `context`: read as None, and its `seq != 0` meant a context.
        let v3 = ClientMsg::Footprint {
            device: 0,
            reserved: 5,
            seq: 2,
            context: Some(0),
        }
        .encode_for(3);
        assert_eq!(v3.len(), 4 + 4 + 8 + 4);
        let Ok(ClientMsg::Footprint { seq, context, .. }) = ClientMsg::decode_for(&v3, 3) else {
            panic!("a version-3 Footprint decodes");
        };
        assert_eq!(context, None);
        assert!(ClientMsg::footprint_is_context(seq, context));
        assert!(!ClientMsg::footprint_is_context(0, None));
        // A version-5 shim says so either way, whatever its seq.
        assert!(!ClientMsg::footprint_is_context(2, Some(0)));
        assert!(ClientMsg::footprint_is_context(0, Some(1)));
    }

    #[test]
    fn idle_is_unknown_to_a_version_3_connection() {
        let idle = ClientMsg::Idle {
            device: 0,
            launches: 7,
        };
        assert_eq!(idle.since(), 4);
        assert_eq!(
            ClientMsg::decode_for(&idle.encode(), 3),
            Err(ProtocolError::UnknownTag(ClientMsg::IDLE))
        );
        assert_eq!(ClientMsg::decode_for(&idle.encode(), 4), Ok(idle));
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let reason = "é".repeat(MAX_MESSAGE);
        let bytes = ServerMsg::Refused { reason }.encode();
        assert!(bytes.len() <= MAX_MESSAGE);
        assert!(matches!(
            ServerMsg::decode(&bytes),
            Ok(ServerMsg::Refused { reason }) if reason.chars().all(|c| c == 'é')
        ));
    }

    #[test]
    fn announced_protocol_is_read_before_agreement() {
        let hello = ClientMsg::Hello {
            protocol: 77,
            pid: 1,
        }
        .encode();
        assert_eq!(ClientMsg::announced_protocol(&hello), Some(77));
        let reattach = ClientMsg::Reattach {
            protocol: 3,
            pid: 1,
            slot: 2,
        }
        .encode();
        assert_eq!(ClientMsg::announced_protocol(&reattach), Some(3));
        let demand = ClientMsg::Demand { device: 0 }.encode();
        assert_eq!(ClientMsg::announced_protocol(&demand), None);
        assert_eq!(ClientMsg::announced_protocol(&[1, 0, 0]), None);
    }

    #[test]
    fn daemon_serves_older_shims_and_refuses_newer() {
        for v in MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION {
            assert_eq!(check_shim_version(v), Ok(()));
        }
        let newer = check_shim_version(PROTOCOL_VERSION + 1).unwrap_err();
        assert!(newer.contains("upgrade gpumuxd"), "{newer}");
        let too_old = check_shim_version(0).unwrap_err();
        assert!(too_old.contains("older"), "{too_old}");
    }

    // The version scheme, exercised on messages with a field and a message added later: what a
    // newer daemon does with an older shim, and what it sends it.
    wire_messages! {
        /// A protocol at version 4: `Ping.extra` came in 2, `Ping.opt` in 3, `Late` in 4.
        pub enum Evolved {
            Ping = PING: 1 { a: u32, extra: u64 since 2, opt: Option<u64> since 3 },
            Late = LATE: 2 since 4 { b: String },
        }
    }

    #[test]
    fn older_peers_get_and_send_only_what_their_version_has() {
        let full = Evolved::Ping {
            a: 5,
            extra: 9,
            opt: Some(0),
        };
        // A version-1 peer sends neither `extra` nor `opt`: decoded with their defaults.
        let v1_bytes = Evolved::Ping {
            a: 5,
            extra: 0,
            opt: None,
        }
        .encode_for(1);
        assert_eq!(v1_bytes.len(), 8);
        assert_eq!(
            Evolved::decode_for(&v1_bytes, 1),
            Ok(Evolved::Ping {
                a: 5,
                extra: 0,
                opt: None,
            })
        );
        // Sent to a version-1 peer, the newer fields are left out; to a version-2 peer
        // `extra` is there and `opt` is not (read back as None); to version 3, all of it.
        assert_eq!(full.encode_for(1), v1_bytes);
        assert_eq!(full.encode_for(2).len(), 16);
        assert_eq!(
            Evolved::decode_for(&full.encode_for(2), 2),
            Ok(Evolved::Ping {
                a: 5,
                extra: 9,
                opt: None,
            })
        );
        assert_eq!(
            Evolved::decode_for(&full.encode_for(3), 3),
            Ok(full.clone())
        );
        // This build (at a version of at least 3) sends and reads all of `Ping`.
        assert_eq!(Evolved::decode(&full.encode()), Ok(full.clone()));
        // Bytes of one version are not accepted as another (no silent misreading).
        assert_eq!(
            Evolved::decode_for(&full.encode_for(2), 1),
            Err(ProtocolError::Trailing(8))
        );
        assert_eq!(
            Evolved::decode_for(&full.encode_for(3), 2),
            Err(ProtocolError::Trailing(9))
        );
        assert_eq!(
            Evolved::decode_for(&v1_bytes, 2),
            Err(ProtocolError::Truncated)
        );
        // A message is unknown to versions older than it.
        let late = Evolved::Late { b: "x".into() };
        assert_eq!(late.since(), 4);
        assert_eq!(late.tag(), Evolved::LATE);
        assert_eq!(
            Evolved::decode_for(&late.encode_for(4), 3),
            Err(ProtocolError::UnknownTag(Evolved::LATE))
        );
        assert_eq!(
            Evolved::decode_for(&late.encode_for(4), 4),
            Ok(late.clone())
        );
    }

    fn client_msg() -> impl Strategy<Value = ClientMsg> {
        prop_oneof![
            (any::<u32>(), any::<u32>())
                .prop_map(|(protocol, pid)| ClientMsg::Hello { protocol, pid }),
            any::<u32>().prop_map(|device| ClientMsg::Demand { device }),
            (any::<u32>(), any::<u64>())
                .prop_map(|(device, launches)| ClientMsg::Idle { device, launches }),
            (any::<u32>(), any::<u32>(), any::<Option<u64>>()).prop_map(
                |(device, epoch, busy_ns)| ClientMsg::Drained {
                    device,
                    epoch,
                    busy_ns,
                }
            ),
            (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(protocol, pid, slot)| {
                ClientMsg::Reattach {
                    protocol,
                    pid,
                    slot,
                }
            }),
        ]
    }

    fn server_msg() -> impl Strategy<Value = ServerMsg> {
        prop_oneof![
            (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(protocol, slot, generation)| {
                ServerMsg::Welcome {
                    protocol,
                    slot,
                    generation,
                }
            }),
            ".{0,200}".prop_map(|reason| ServerMsg::Refused { reason }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(device, epoch)| ServerMsg::Revoke { device, epoch }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2 * MAX_MESSAGE)) {
            for v in 0..=PROTOCOL_VERSION + 1 {
                let _ignored = ClientMsg::decode_for(&bytes, v);
                let _ignored = ServerMsg::decode_for(&bytes, v);
            }
            let _ignored = ClientMsg::announced_protocol(&bytes);
        }

        #[test]
        fn every_message_round_trips(c in client_msg(), s in server_msg()) {
            let bytes = c.encode();
            prop_assert!(bytes.len() <= MAX_MESSAGE);
            prop_assert_eq!(ClientMsg::decode(&bytes), Ok(c));
            let bytes = s.encode();
            prop_assert!(bytes.len() <= MAX_MESSAGE);
            prop_assert_eq!(ServerMsg::decode(&bytes), Ok(s));
        }

        #[test]
        fn truncations_and_extensions_are_rejected(c in client_msg(), cut in 0usize..32, extra in 1usize..8) {
            let bytes = c.encode();
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(ClientMsg::decode(&bytes[..cut]).is_err());
            let mut longer = bytes.clone();
            longer.extend(std::iter::repeat_n(0u8, extra));
            prop_assert_eq!(ClientMsg::decode(&longer), Err(ProtocolError::Trailing(extra)));
        }
    }
}
