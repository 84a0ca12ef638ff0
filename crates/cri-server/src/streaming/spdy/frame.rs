//! SPDY/3 frames: the 8-byte header, the control frames spdystream knows, and DATA.
//!
//! Decoding refuses everything spdystream treats as fatal on read, so that a frame this module
//! accepts is one the session can act on, and a frame it encodes is one spdystream accepts.

use super::headers::{Headers, NvCompressor, NvInflater};
use super::SpdyError;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;
/// GOAWAY status codes.
pub const GOAWAY_OK: u32 = 0;
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// Length of every frame header.
pub const HEADER_LEN: usize = 8;
/// The 24-bit length field's limit.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// One frame, with header blocks already inflated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    /// Entries are (flags, id, value); parsed only to check the frame's shape.
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        id: u32,
        delta: u32,
    },
    Data {
        id: u32,
        flags: u8,
        data: Vec<u8>,
    },
}

/// Payload length announced by a frame header.
pub fn payload_len(header: &[u8; HEADER_LEN]) -> usize {
    u32::from_be_bytes([0, header[5], header[6], header[7]]) as usize
}

impl Frame {
    /// Appends the frame to `out`; header blocks go through `nv`, so frames must be encoded in
    /// the order they are sent.
    pub fn encode(&self, nv: &mut NvCompressor, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let mut body = Vec::new();
        let put = |body: &mut Vec<u8>, v: u32| body.extend_from_slice(&v.to_be_bytes());
        let (kind, flags) = match self {
            Frame::Data { id, flags, data } => {
                put_header(out, id & 0x7fff_ffff, *flags, data.len())?;
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::SynStream { id, associated, priority, flags, headers } => {
                put(&mut body, id & 0x7fff_ffff);
                put(&mut body, associated & 0x7fff_ffff);
                body.extend_from_slice(&[priority << 5, 0]);
                body.extend_from_slice(&nv.compress(headers)?);
                (SYN_STREAM, *flags)
            }
            Frame::SynReply { id, flags, headers } | Frame::Headers { id, flags, headers } => {
                put(&mut body, id & 0x7fff_ffff);
                body.extend_from_slice(&nv.compress(headers)?);
                let kind = if matches!(self, Frame::SynReply { .. }) { SYN_REPLY } else { HEADERS };
                (kind, *flags)
            }
            Frame::RstStream { id, status } => {
                put(&mut body, id & 0x7fff_ffff);
                put(&mut body, *status);
                (RST_STREAM, 0)
            }
            Frame::Settings { flags, entries } => {
                put(&mut body, entries.len() as u32);
                for (flags, id, value) in entries {
                    put(&mut body, (u32::from(*flags) << 24) | (id & 0xff_ffff));
                    put(&mut body, *value);
                }
                (SETTINGS, *flags)
            }
            Frame::Ping { id } => {
                put(&mut body, *id);
                (PING, 0)
            }
            Frame::GoAway { last_good, status } => {
                put(&mut body, last_good & 0x7fff_ffff);
                put(&mut body, *status);
                (GOAWAY, 0)
            }
            Frame::WindowUpdate { id, delta } => {
                put(&mut body, id & 0x7fff_ffff);
                put(&mut body, delta & 0x7fff_ffff);
                (WINDOW_UPDATE, 0)
            }
        };
        let word = 0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(kind);
        put_header(out, word, flags, body.len())?;
        out.extend_from_slice(&body);
        Ok(())
    }

    /// Decodes one whole frame (header and payload). Header blocks are inflated through `nv`
    /// into at most `max_header_block` bytes.
    pub fn decode(
        frame: &[u8],
        nv: &mut NvInflater,
        max_header_block: usize,
    ) -> Result<Frame, SpdyError> {
        let Some((header, payload)) = frame.split_first_chunk::<HEADER_LEN>() else {
            return Err(SpdyError::protocol("short frame"));
        };
        if payload.len() != payload_len(header) {
            return Err(SpdyError::protocol("frame length does not match its header"));
        }
        let word = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let flags = header[4];
        if word & 0x8000_0000 == 0 {
            let id = nonzero_id(word)?;
            return Ok(Frame::Data { id, flags, data: payload.to_vec() });
        }
        // The version is not checked: spdystream does not check it either.
        let kind = word as u16;
        let u32_at = |at: usize| {
            u32::from_be_bytes([payload[at], payload[at + 1], payload[at + 2], payload[at + 3]])
        };
        let need = |len: usize, exact: bool| {
            let ok = if exact { payload.len() == len } else { payload.len() >= len };
            if ok {
                Ok(())
            } else {
                Err(SpdyError::protocol(format!("control frame {kind} of bad length")))
            }
        };
        let frame = match kind {
            SYN_STREAM => {
                need(10, false)?;
                Frame::SynStream {
                    id: nonzero_id(u32_at(0))?,
                    associated: u32_at(4) & 0x7fff_ffff,
                    priority: payload[8] >> 5,
                    flags,
                    headers: nv.inflate(&payload[10..], max_header_block)?,
                }
            }
            SYN_REPLY | HEADERS => {
                need(4, false)?;
                let id = nonzero_id(u32_at(0))?;
                let headers = nv.inflate(&payload[4..], max_header_block)?;
                if kind == SYN_REPLY {
                    Frame::SynReply { id, flags, headers }
                } else {
                    Frame::Headers { id, flags, headers }
                }
            }
            RST_STREAM => {
                need(8, true)?;
                let (id, status) = (nonzero_id(u32_at(0))?, u32_at(4));
                if status == 0 {
                    return Err(SpdyError::protocol("RST_STREAM with status 0"));
                }
                Frame::RstStream { id, status }
            }
            SETTINGS => {
                need(4, false)?;
                let count = u32_at(0) as usize;
                if (payload.len() - 4) / 8 != count || (payload.len() - 4) % 8 != 0 {
                    return Err(SpdyError::protocol("SETTINGS count does not match its length"));
                }
                let entries = (0..count)
                    .map(|i| {
                        let at = 4 + 8 * i;
                        let word = u32_at(at);
                        ((word >> 24) as u8, word & 0xff_ffff, u32_at(at + 4))
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            PING => {
                need(4, true)?;
                let id = u32_at(0);
                if id == 0 || flags != 0 {
                    return Err(SpdyError::protocol("PING with id 0 or flags"));
                }
                Frame::Ping { id }
            }
            GOAWAY => {
                need(8, true)?;
                if flags != 0 {
                    return Err(SpdyError::protocol("GOAWAY with flags"));
                }
                Frame::GoAway { last_good: u32_at(0) & 0x7fff_ffff, status: u32_at(4) }
            }
            WINDOW_UPDATE => {
                need(8, true)?;
                if flags != 0 {
                    return Err(SpdyError::protocol("WINDOW_UPDATE with flags"));
                }
                Frame::WindowUpdate { id: u32_at(0) & 0x7fff_ffff, delta: u32_at(4) & 0x7fff_ffff }
            }
            other => {
                return Err(SpdyError::protocol(format!("unknown control frame type {other}")))
            }
        };
        Ok(frame)
    }
}

fn put_header(out: &mut Vec<u8>, word: u32, flags: u8, len: usize) -> Result<(), SpdyError> {
    if len > MAX_PAYLOAD {
        return Err(SpdyError::FrameTooLarge { len, limit: MAX_PAYLOAD });
    }
    out.extend_from_slice(&word.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    Ok(())
}

fn nonzero_id(word: u32) -> Result<u32, SpdyError> {
    match word & 0x7fff_ffff {
        0 => Err(SpdyError::protocol("stream id 0")),
        id => Ok(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frames: &[Frame]) {
        let mut nv = NvCompressor::new().unwrap();
        let mut inflater = NvInflater::new();
        let mut wire = Vec::new();
        for f in frames {
            f.encode(&mut nv, &mut wire).unwrap();
        }
        let mut rest = &wire[..];
        for f in frames {
            let header: [u8; 8] = rest[..8].try_into().unwrap();
            let len = HEADER_LEN + payload_len(&header);
            assert_eq!(&Frame::decode(&rest[..len], &mut inflater, 1 << 16).unwrap(), f);
            rest = &rest[len..];
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn frames_round_trip() {
        round_trip(&[
            Frame::SynStream {
                id: 1,
                associated: 0,
                priority: 0,
                flags: FLAG_FIN,
                headers: Headers::new().with("streamtype", "error"),
            },
            Frame::SynReply { id: 1, flags: 0, headers: Headers::new() },
            Frame::Headers { id: 1, flags: FLAG_FIN, headers: Headers::new().with("a", "b") },
            Frame::Data { id: 1, flags: 0, data: b"hello".to_vec() },
            Frame::Data { id: 0x7fff_ffff, flags: FLAG_FIN, data: Vec::new() },
            Frame::RstStream { id: 3, status: RST_CANCEL },
            Frame::Settings { flags: 0, entries: vec![(0, 7, 65536), (1, 4, 100)] },
            Frame::Ping { id: 1 },
            Frame::GoAway { last_good: 5, status: GOAWAY_OK },
            Frame::WindowUpdate { id: 0, delta: 1000 },
        ]);
    }

    #[test]
    fn wire_layout_of_fixed_frames() {
        let mut nv = NvCompressor::new().unwrap();
        let mut out = Vec::new();
        Frame::RstStream { id: 3, status: RST_CANCEL }.encode(&mut nv, &mut out).unwrap();
        assert_eq!(out, [0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 5]);
        out.clear();
        Frame::Data { id: 1, flags: FLAG_FIN, data: b"ab".to_vec() }
            .encode(&mut nv, &mut out)
            .unwrap();
        assert_eq!(out, [0, 0, 0, 1, 1, 0, 0, 2, b'a', b'b']);
        out.clear();
        Frame::Ping { id: 7 }.encode(&mut nv, &mut out).unwrap();
        assert_eq!(out, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]);
    }

    #[test]
    fn fatal_frames_are_refused() {
        let bad: &[&[u8]] = &[
            &[0x80, 3, 0, 5, 0, 0, 0, 0],                         // type 5
            &[0x80, 3, 0, 10, 0, 0, 0, 0],                        // CREDENTIAL
            &[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0], // RST status 0
            &[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 5], // RST id 0
            &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 0],             // PING id 0
            &[0x80, 3, 0, 6, 1, 0, 0, 4, 0, 0, 0, 1],             // PING flags
            &[0x80, 3, 0, 7, 0, 0, 0, 4, 0, 0, 0, 1],             // short GOAWAY
            &[0x80, 3, 0, 9, 1, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 1], // WINDOW_UPDATE flags
            &[0x80, 3, 0, 4, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 0], // SETTINGS count
            &[0x80, 3, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1],             // short SYN_STREAM
            &[0, 0, 0, 0, 0, 0, 0, 1, 0],                         // DATA id 0
            &[0, 0, 0, 1, 0, 0, 0, 3, 0],                         // length mismatch
        ];
        for frame in bad {
            let r = Frame::decode(frame, &mut NvInflater::new(), 1 << 16);
            assert!(r.is_err(), "{frame:02x?} decoded as {r:?}");
        }
    }
}
