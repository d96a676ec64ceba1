//! The five Kafka compression codecs of a batch's records section.
//!
//! Snappy comes in two framings: raw blocks (what librdkafka writes) and the Java client's
//! "xerial" framing (a magic header, then length-prefixed blocks). Both are read; xerial is
//! written, because every client reads it. LZ4 is the standard LZ4 frame format.

use std::io::{Read, Write};

use crate::error::{Error, Result};

/// Compression codec of a batch (attribute bits 0–2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Records stored as they are.
    None,
    /// gzip (RFC 1952).
    Gzip,
    /// Snappy, raw or xerial-framed.
    Snappy,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard.
    Zstd,
}

const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;
const XERIAL_BLOCK_LEN: usize = 32 * 1024;

impl Compression {
    /// Every codec, for tests and tools.
    pub const ALL: [Compression; 5] =
        [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

    /// The codec for an attribute id.
    pub fn from_id(id: u8) -> Result<Compression> {
        Ok(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(Error::UnsupportedCompression(other)),
        })
    }

    /// The attribute id of this codec.
    pub fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// Compresses a records section.
    pub fn compress(self, input: &[u8]) -> Result<Vec<u8>> {
        let codec_error = |_| Error::InvalidRecord("compression failed");
        match self {
            Compression::None => Ok(input.to_vec()),
            Compression::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(input).map_err(codec_error)?;
                encoder.finish().map_err(codec_error)
            }
            Compression::Snappy => {
                let mut out = Vec::with_capacity(input.len() / 2 + XERIAL_HEADER_LEN);
                out.extend_from_slice(XERIAL_MAGIC);
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                let mut encoder = snap::raw::Encoder::new();
                for block in input.chunks(XERIAL_BLOCK_LEN) {
                    let compressed =
                        encoder.compress_vec(block).map_err(|_| Error::InvalidRecord("compression failed"))?;
                    out.extend_from_slice(&(compressed.len() as i32).to_be_bytes());
                    out.extend_from_slice(&compressed);
                }
                Ok(out)
            }
            Compression::Lz4 => {
                let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
                encoder.write_all(input).map_err(codec_error)?;
                encoder.finish().map_err(|_| Error::InvalidRecord("compression failed"))
            }
            Compression::Zstd => zstd::bulk::compress(input, 3).map_err(codec_error),
        }
    }

    /// Decompresses a records section, refusing to inflate past `limit` bytes.
    pub fn decompress(self, input: &[u8], limit: usize) -> Result<Vec<u8>> {
        match self {
            Compression::None => Ok(input.to_vec()),
            Compression::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(input), limit),
            Compression::Snappy => decompress_snappy(input, limit),
            Compression::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(input), limit),
            Compression::Zstd => {
                let decoder = zstd::stream::read::Decoder::with_buffer(input)
                    .map_err(|_| Error::MalformedBatch("bad zstd stream"))?;
                read_bounded(decoder, limit)
            }
        }
    }
}

fn read_bounded(reader: impl Read, limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| Error::MalformedBatch("compressed records do not decode"))?;
    if out.len() > limit {
        return Err(Error::InvalidRecord("records inflate past the decompression limit"));
    }
    Ok(out)
}

fn decompress_snappy(input: &[u8], limit: usize) -> Result<Vec<u8>> {
    let bad = |_| Error::MalformedBatch("snappy records do not decode");
    let mut decoder = snap::raw::Decoder::new();
    if !input.starts_with(XERIAL_MAGIC) {
        let length = snap::raw::decompress_len(input).map_err(bad)?;
        if length > limit {
            return Err(Error::InvalidRecord("records inflate past the decompression limit"));
        }
        return decoder.decompress_vec(input).map_err(bad);
    }
    if input.len() < XERIAL_HEADER_LEN {
        return Err(Error::MalformedBatch("truncated xerial snappy header"));
    }
    let mut out = Vec::new();
    let mut rest = &input[XERIAL_HEADER_LEN..];
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(Error::MalformedBatch("truncated xerial snappy block"));
        }
        let block_len = i32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
        rest = &rest[4..];
        if block_len < 0 || block_len as usize > rest.len() {
            return Err(Error::MalformedBatch("truncated xerial snappy block"));
        }
        let (block, tail) = rest.split_at(block_len as usize);
        rest = tail;
        let length = snap::raw::decompress_len(block).map_err(bad)?;
        if out.len() + length > limit {
            return Err(Error::InvalidRecord("records inflate past the decompression limit"));
        }
        let start = out.len();
        out.resize(start + length, 0);
        decoder.decompress(block, &mut out[start..]).map_err(bad)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let input: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for codec in Compression::ALL {
            let compressed = codec.compress(&input).unwrap();
            assert_eq!(codec.decompress(&compressed, input.len()).unwrap(), input, "{codec:?}");
            assert_eq!(Compression::from_id(codec.id()).unwrap(), codec);
        }
    }

    #[test]
    fn decompression_is_bounded() {
        let input = vec![7u8; 1 << 20];
        for codec in Compression::ALL {
            if codec == Compression::None {
                continue;
            }
            let compressed = codec.compress(&input).unwrap();
            assert!(
                matches!(codec.decompress(&compressed, 1000), Err(Error::InvalidRecord(_))),
                "{codec:?} inflated past its limit"
            );
        }
    }

    #[test]
    fn raw_snappy_from_librdkafka_is_read() {
        let input = b"hello hello hello hello".repeat(10);
        let raw = snap::raw::Encoder::new().compress_vec(&input).unwrap();
        assert_eq!(Compression::Snappy.decompress(&raw, 1 << 20).unwrap(), input);
    }

    #[test]
    fn garbage_never_panics() {
        for codec in Compression::ALL {
            for garbage in [
                &b""[..],
                b"\x00",
                b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01\xff\xff\xff\xff",
                b"\x28\xb5\x2f\xfd\x00",
            ] {
                let _ = codec.decompress(garbage, 1 << 20);
            }
        }
    }
}
