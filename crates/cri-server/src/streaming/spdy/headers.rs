//! SPDY/3 Name/Value header blocks and their zlib compression with the SPDY/3 dictionary.
//!
//! Each direction of a session is one zlib stream begun with [`DICTIONARY`]; every block is
//! compressed with a SYNC_FLUSH, so compressor and inflater must live as long as the session and
//! see the blocks in wire order.

use std::collections::HashSet;

use zlib_rs::{Deflate, DeflateFlush, Inflate, InflateError, InflateFlush, Status};

use super::SpdyError;

/// Adler-32 of [`DICTIONARY`]: the DICTID in the zlib header of every SPDY/3 header stream.
pub const DICTIONARY_ADLER32: u32 = 0xE3C6_A7C2;

/// The SPDY/3 header compression dictionary (`SPDY_dictionary_txt` of the draft), 1423 bytes.
pub const DICTIONARY: &[u8; 1423] =
    b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\x00\
    \x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-char\
    set\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-\
    ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\
    \x0dcache-control\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10c\
    ontent-encoding\x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-length\x00\x00\
    \x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\x00\x00\
    \x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\x00\
    \x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08if-match\x00\
    \x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\x00\x08if-range\x00\
    \x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\x00\x00\x00\x08location\x00\
    \x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\
    \x00\x13proxy-authorization\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0br\
    etry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\x00\x00\x00\
    \x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\x00\x00\x00\x04va\
    ry\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\x00\x00\x00\
    \x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00\
    \x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00\x00\
    \x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin10010120120220520630030230\
    3304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative In\
    formation204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden\
    404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb \
    Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
    chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,te\
    xt/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-\
    8859-1,utf-,*,enq=0.";

/// The name/value pairs of a SYN_STREAM, SYN_REPLY or HEADERS frame.
///
/// Names are kept lower case (SPDY requires it on the wire); lookups ignore case because Go's
/// peers send names in map order and the spelling callers use varies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// Adds a pair; the name is lower-cased. A repeated name is sent as one pair whose values
    /// are joined with NUL, as SPDY/3 wants.
    pub fn insert(&mut self, name: &str, value: impl Into<String>) {
        self.0.push((name.to_ascii_lowercase(), value.into()));
    }

    /// Builder form of [`Headers::insert`].
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.insert(name, value);
        self
    }

    /// The first value of `name`, whatever its case. A value received as several NUL-joined
    /// values yields the first of them.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split('\0').next().unwrap_or(v))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The uncompressed NV block: pair count, then length-prefixed names and values, with
    /// repeated names merged (a duplicate name on the wire is fatal to spdystream).
    pub fn encode_block(&self) -> Vec<u8> {
        let mut merged: Vec<(&str, String)> = Vec::with_capacity(self.0.len());
        for (name, value) in &self.0 {
            match merged.iter_mut().find(|(n, _)| n == name) {
                Some((_, joined)) => {
                    joined.push('\0');
                    joined.push_str(value);
                }
                None => merged.push((name, value.clone())),
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(merged.len() as u32).to_be_bytes());
        for (name, value) in merged {
            for part in [name.as_bytes(), value.as_bytes()] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part);
            }
        }
        out
    }

    /// Parses an uncompressed NV block, which must be consumed exactly. Upper-case, empty or
    /// repeated names are refused, as spdystream refuses them.
    pub fn decode_block(mut raw: &[u8]) -> Result<Headers, SpdyError> {
        let count = take_u32(&mut raw)? as usize;
        // Each pair takes at least 8 bytes: this bounds the loop before trusting `count`.
        if count > raw.len() / 8 {
            return Err(SpdyError::protocol("header block pair count exceeds its length"));
        }
        let mut seen = HashSet::with_capacity(count);
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            let name = take_bytes(&mut raw)?;
            let value = take_bytes(&mut raw)?;
            let name = std::str::from_utf8(name)
                .map_err(|_| SpdyError::protocol("header name is not utf-8"))?;
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(SpdyError::protocol(format!("invalid header name {name:?}")));
            }
            if !seen.insert(name) {
                return Err(SpdyError::protocol(format!("duplicate header name {name:?}")));
            }
            pairs.push((name.to_owned(), String::from_utf8_lossy(value).into_owned()));
        }
        if !raw.is_empty() {
            return Err(SpdyError::protocol("trailing bytes after the header block"));
        }
        Ok(Headers(pairs))
    }
}

impl<N: AsRef<str>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (name, value) in iter {
            headers.insert(name.as_ref(), value);
        }
        headers
    }
}

fn take_u32(raw: &mut &[u8]) -> Result<u32, SpdyError> {
    let Some((head, rest)) = raw.split_first_chunk::<4>() else {
        return Err(SpdyError::protocol("truncated header block"));
    };
    *raw = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_bytes<'a>(raw: &mut &'a [u8]) -> Result<&'a [u8], SpdyError> {
    let len = take_u32(raw)? as usize;
    if len > raw.len() {
        return Err(SpdyError::protocol("truncated header block"));
    }
    let (bytes, rest) = raw.split_at(len);
    *raw = rest;
    Ok(bytes)
}

/// The compressing half: one per session direction, owned by whoever writes frames.
pub struct NvCompressor {
    z: Deflate,
}

impl NvCompressor {
    pub fn new() -> Result<Self, SpdyError> {
        // Level 9 as client-go's writer: the bytes differ by implementation anyway, only the
        // stream format matters to the peer.
        let mut z = Deflate::new(9, true, 15);
        z.set_dictionary(DICTIONARY).map_err(|e| SpdyError::Compression(e.as_str().into()))?;
        Ok(NvCompressor { z })
    }

    /// Compresses one block, ending it with a SYNC_FLUSH so the peer can inflate it whole.
    pub fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let raw = headers.encode_block();
        let start = self.z.total_in();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let done = (self.z.total_in() - start) as usize;
            let before = self.z.total_out();
            self.z
                .compress(&raw[done..], &mut chunk, DeflateFlush::SyncFlush)
                .map_err(|e| SpdyError::Compression(e.as_str().into()))?;
            let produced = (self.z.total_out() - before) as usize;
            out.extend_from_slice(&chunk[..produced]);
            // zlib has flushed everything once all input is taken and output space is left.
            let done = (self.z.total_in() - start) as usize;
            if done == raw.len() && produced < chunk.len() {
                return Ok(out);
            }
        }
    }
}

/// The inflating half: one per session direction, owned by whoever reads frames.
pub struct NvInflater {
    z: Inflate,
}

impl Default for NvInflater {
    fn default() -> Self {
        NvInflater { z: Inflate::new(true, 15) }
    }
}

impl NvInflater {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inflates one compressed block (the tail of one frame) into at most `max` bytes and
    /// parses it. The compressed bytes must be consumed exactly.
    pub fn inflate(&mut self, block: &[u8], max: usize) -> Result<Headers, SpdyError> {
        let start = self.z.total_in();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let done = (self.z.total_in() - start) as usize;
            let before = self.z.total_out();
            let status =
                match self.z.decompress(&block[done..], &mut chunk, InflateFlush::SyncFlush) {
                    Ok(status) => status,
                    // The first block asks for the dictionary once its zlib header is read.
                    Err(InflateError::NeedDict { dict_id: DICTIONARY_ADLER32 }) => {
                        self.z
                            .set_dictionary(DICTIONARY)
                            .map_err(|e| SpdyError::Compression(e.as_str().into()))?;
                        continue;
                    }
                    Err(InflateError::NeedDict { dict_id }) => {
                        return Err(SpdyError::Compression(format!(
                            "unknown dictionary {dict_id:#x}"
                        )))
                    }
                    Err(e) => return Err(SpdyError::Compression(e.as_str().into())),
                };
            let produced = (self.z.total_out() - before) as usize;
            if out.len() + produced > max {
                return Err(SpdyError::HeaderBlockTooLarge(max));
            }
            out.extend_from_slice(&chunk[..produced]);
            let done = (self.z.total_in() - start) as usize;
            let drained = done == block.len() && produced < chunk.len();
            if drained || status != Status::Ok {
                break;
            }
        }
        if (self.z.total_in() - start) as usize != block.len() {
            return Err(SpdyError::protocol("compressed header block not consumed exactly"));
        }
        Headers::decode_block(&out)
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    const GO_ERROR_BLOCK: &str =
        "78f9e3c6a7c2626060 6004a7b392a2d4c45c6851c29a5a54945f04 000000ffff";
    const GO_EMPTY_BLOCK: &str = "62 60 60 60 00 00 00 00 ff ff";

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.ends_with(b",enq=0."));
        let digest: String =
            Sha256::digest(DICTIONARY).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(digest, "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02");
        let mut z = Deflate::new(9, true, 15);
        assert_eq!(z.set_dictionary(DICTIONARY).unwrap(), DICTIONARY_ADLER32);
    }

    #[test]
    fn block_encoding_matches_the_fact_sheet() {
        let h = Headers::new().with("streamType", "error");
        assert_eq!(
            h.encode_block(),
            hex("00000001 0000000a 73747265616d74797065 00000005 6572726f72")
        );
        assert_eq!(Headers::decode_block(&h.encode_block()).unwrap(), h);
        assert_eq!(h.get("STREAMTYPE"), Some("error"));
    }

    #[test]
    fn repeated_names_are_joined_with_nul() {
        let h = Headers::new().with("a", "1").with("b", "x").with("A", "2");
        let back = Headers::decode_block(&h.encode_block()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back.get("a"), Some("1"));
        assert_eq!(back.iter().next(), Some(("a", "1\u{0}2")));
    }

    #[test]
    fn bad_blocks_are_refused() {
        let upper = hex("00000001 00000001 41 00000000");
        assert!(Headers::decode_block(&upper).is_err());
        let dup = hex("00000002 00000001 61 00000000 00000001 61 00000000");
        assert!(Headers::decode_block(&dup).is_err());
        let empty_name = hex("00000001 00000000 00000000");
        assert!(Headers::decode_block(&empty_name).is_err());
        let trailing = hex("00000000 00");
        assert!(Headers::decode_block(&trailing).is_err());
        let truncated = hex("00000001 00000005 6162");
        assert!(Headers::decode_block(&truncated).is_err());
        let huge_count = hex("7fffffff 00000000");
        assert!(Headers::decode_block(&huge_count).is_err());
    }

    #[test]
    fn inflates_go_bytes_on_one_stream() {
        let mut inflater = NvInflater::new();
        let first = inflater.inflate(&hex(GO_ERROR_BLOCK), 1 << 16).unwrap();
        assert_eq!(first, Headers::new().with("streamtype", "error"));
        let second = inflater.inflate(&hex(GO_EMPTY_BLOCK), 1 << 16).unwrap();
        assert!(second.is_empty());
    }

    #[test]
    fn compressor_round_trips_and_starts_like_go() {
        let mut compressor = NvCompressor::new().unwrap();
        let mut inflater = NvInflater::new();
        let first = compressor.compress(&Headers::new().with("streamtype", "error")).unwrap();
        assert_eq!(first[..6], hex("78f9e3c6a7c2"));
        assert!(first.ends_with(&[0, 0, 0xff, 0xff]));
        let blocks = [
            Headers::new(),
            Headers::new().with("streamtype", "data").with("port", "80").with("requestid", "0"),
            Headers::new().with("x", "y".repeat(40_000)),
        ];
        assert_eq!(
            inflater.inflate(&first, 1 << 16).unwrap(),
            Headers::new().with("streamtype", "error")
        );
        for h in blocks {
            let c = compressor.compress(&h).unwrap();
            assert!(c.ends_with(&[0, 0, 0xff, 0xff]));
            assert_eq!(inflater.inflate(&c, 1 << 16).unwrap(), h);
        }
    }

    #[test]
    fn inflater_refuses_oversize_and_partial_blocks() {
        let mut compressor = NvCompressor::new().unwrap();
        let big = compressor.compress(&Headers::new().with("x", "y".repeat(100_000))).unwrap();
        assert!(big.len() < 2000);
        assert!(matches!(
            NvInflater::new().inflate(&big, 1 << 16),
            Err(SpdyError::HeaderBlockTooLarge(_))
        ));
        // A block cut short inflates to a truncated NV block.
        let go = hex(GO_ERROR_BLOCK);
        assert!(NvInflater::new().inflate(&go[..20], 1 << 16).is_err());
        // Garbage that is not zlib at all.
        assert!(NvInflater::new().inflate(b"not zlib at all", 1 << 16).is_err());
        // A zlib stream with another dictionary id.
        let mut other = go.clone();
        other[2..6].copy_from_slice(&[1, 2, 3, 4]);
        assert!(NvInflater::new().inflate(&other, 1 << 16).is_err());
    }
}
