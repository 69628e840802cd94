//! Decompressing the extents of protocol 2's encoded writes, as btrfs stores them: one zlib
//! stream, one zstd frame, or btrfs's LZO layout (a little-endian `u32` total length, then
//! segments of a `u32` length and an LZO1X block of at most one sector, a segment header
//! never split across a sector boundary).

use std::io::Read;

/// The compressions an encoded write names (`BTRFS_ENCODED_IO_COMPRESSION_*`).
const NONE: u64 = 0;
const ZLIB: u64 = 1;
const ZSTD: u64 = 2;
const LZO_4K: u64 = 3;
const LZO_64K: u64 = 7;

/// The largest decoded extent accepted: btrfs's are at most 128 KiB; anything far beyond
/// was not written by btrfs.
pub(crate) const MAX_DECODED: u64 = 16 << 20;

/// Decodes `data` compressed with `compression` into `length` bytes (short output is padded
/// with zeros, as `btrfs receive` does); `Err` says what is wrong.
pub(crate) fn decode(data: &[u8], compression: u64, length: u64) -> Result<Vec<u8>, String> {
    if length > MAX_DECODED {
        return Err(format!("an extent of {length} bytes is too large"));
    }
    let length = usize::try_from(length).map_err(|_| "an extent too large".to_owned())?;
    let mut out = vec![0u8; length];
    match compression {
        NONE => {
            let n = data.len().min(length);
            out[..n].copy_from_slice(&data[..n]);
        }
        ZLIB => fill(flate2::read::ZlibDecoder::new(data), &mut out)
            .map_err(|error| format!("zlib: {error}"))?,
        ZSTD => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(data)
                .map_err(|error| format!("zstd: {error}"))?;
            fill(decoder, &mut out).map_err(|error| format!("zstd: {error}"))?;
        }
        LZO_4K..=LZO_64K => lzo(data, &mut out, 1 << (compression - LZO_4K + 12))?,
        other => return Err(format!("unknown compression {other}")),
    }
    Ok(out)
}

/// Reads `reader` into `out` until either ends.
fn fill(mut reader: impl Read, out: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < out.len() {
        match reader.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn le32(data: &[u8], at: usize) -> Result<usize, String> {
    let bytes: [u8; 4] = data
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("lzo: a length at byte {at} is cut off"))?;
    Ok(u32::from_le_bytes(bytes) as usize)
}

/// btrfs's LZO extent layout with sectors of `sector` bytes.
fn lzo(data: &[u8], out: &mut [u8], sector: usize) -> Result<(), String> {
    const LEN: usize = 4;
    let total = le32(data, 0)?;
    if total > data.len() {
        return Err(format!(
            "lzo: the extent says {total} bytes but has {}",
            data.len()
        ));
    }
    let mut at = LEN;
    let mut written = 0;
    while at < total && written < out.len() {
        // A segment header never straddles a sector: the rest of the sector is padding.
        let left_in_sector = (sector - at % sector) % sector;
        if left_in_sector < LEN {
            if total - at <= left_in_sector {
                break;
            }
            at += left_in_sector;
        }
        let length = le32(data, at)?;
        at += LEN;
        if length > total - at {
            return Err(format!("lzo: a segment at byte {at} runs past the extent"));
        }
        let end = (written + sector).min(out.len());
        let n = lzo::decompress_into(&data[at..at + length], &mut out[written..end])
            .map_err(|error| format!("lzo: segment at byte {at}: {error:?}"))?;
        at += length;
        written += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn text(length: usize) -> Vec<u8> {
        (0..length)
            .map(|i| b"the quick brown fox "[i % 20] ^ u8::from(i % 7 == 0))
            .collect()
    }

    #[test]
    fn zlib_and_zstd_extents_decode_to_their_text() {
        let plain = text(100_000);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(&plain).unwrap();
        let zlib = zlib.finish().unwrap();
        assert_eq!(decode(&zlib, ZLIB, 100_000).unwrap(), plain);
        let zstd = ruzstd::encoding::compress_to_vec(
            plain.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(decode(&zstd, ZSTD, 100_000).unwrap(), plain);
        // The extent is longer than the file's data in it: zeros after, as btrfs receive.
        let mut padded = plain.clone();
        padded.resize(131_072, 0);
        assert_eq!(decode(&zstd, ZSTD, 131_072).unwrap(), padded);
    }

    #[test]
    fn an_lzo_extent_of_stored_segments_decodes_across_sector_padding() {
        // LZO1X blocks of literals only: `17 + n` then the bytes, then the end marker.
        fn literal_block(bytes: &[u8]) -> Vec<u8> {
            let mut block = vec![u8::try_from(17 + bytes.len()).unwrap()];
            block.extend_from_slice(bytes);
            block.extend_from_slice(&[17, 0, 0]);
            block
        }
        let sector = 4096;
        let mut extent = vec![0u8; 4];
        let mut expected = Vec::new();
        let mut segment = |extent: &mut Vec<u8>, bytes: &[u8]| {
            let block = literal_block(bytes);
            extent.extend_from_slice(&u32::try_from(block.len()).unwrap().to_le_bytes());
            extent.extend_from_slice(&block);
            expected.extend_from_slice(bytes);
        };
        // Segments up to 2 bytes before the sector's end (16 of 8 + 238 bytes, one of
        // 8 + 146): the next header starts the next sector.
        for n in 0..16u8 {
            segment(&mut extent, &[n; 238]);
        }
        segment(&mut extent, &[99; 146]);
        assert_eq!(extent.len(), sector - 2);
        extent.resize(sector, 0);
        segment(&mut extent, b"world");
        let total = u32::try_from(extent.len()).unwrap();
        extent[..4].copy_from_slice(&total.to_le_bytes());
        let mut out = vec![0u8; expected.len()];
        lzo(&extent, &mut out, sector).unwrap();
        assert_eq!(out, expected);
        // Cut short: the total length says more than there is.
        assert!(decode(&extent[..100], LZO_4K, 12).is_err());
    }

    #[test]
    fn damaged_or_oversized_extents_are_errors_not_panics() {
        assert!(decode(b"not zlib", ZLIB, 10).is_err());
        assert!(decode(b"not zstd", ZSTD, 10).is_err());
        assert!(decode(b"", 9, 10).is_err());
        assert!(decode(b"", NONE, MAX_DECODED + 1).is_err());
        assert!(decode(&[200, 0, 0, 0], LZO_4K, 10).is_err());
    }
}
