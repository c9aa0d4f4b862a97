//! Sparse files in layers, in the two forms GNU tar writes with `--sparse`:
//!
//! * the old GNU format (`--format=gnu`, entry type `S`): the `tar` crate
//!   reads its map and hands over the whole file, holes as zeros; zero
//!   blocks are skipped here ([`copy_skipping_zeros`]) so the holes stay
//!   holes on disk;
//! * PAX format 1.0 (`--format=posix`, GNU tar's default there): a regular
//!   entry named `…/GNUSparseFile.N/NAME` whose PAX records give the real
//!   name and size, and whose data starts with the map (decimal numbers,
//!   one per line, padded to 512 bytes). Go's `archive/tar` reads it, so
//!   containerd and docker do; the `tar` crate does not, so
//!   [`PaxSparse`] and [`copy_pax_1_0`] do.
//!
//! The older PAX formats 0.0 and 0.1 (`--sparse-version`) are refused with
//! a clear error rather than unpacked wrongly.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use super::{Fail, MAX_METADATA_BYTES, copy_exact};

const BLOCK: usize = 512;

/// A PAX 1.0 sparse entry: its real name and size.
#[derive(Debug)]
pub(super) struct PaxSparse {
    pub name: Option<Vec<u8>>,
    pub real_size: u64,
}

impl PaxSparse {
    /// From an entry's PAX records; `None` when the entry is not sparse.
    pub fn from_records<'a>(
        records: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<Option<Self>, Fail> {
        let (mut major, mut minor, mut name, mut real_size, mut other) =
            (None, None, None, None, false);
        for (key, value) in records {
            match key {
                b"GNU.sparse.major" => major = Some(value),
                b"GNU.sparse.minor" => minor = Some(value),
                b"GNU.sparse.name" => name = Some(value.to_vec()),
                b"GNU.sparse.realsize" => real_size = Some(value),
                k if k.starts_with(b"GNU.sparse.") => other = true,
                _ => {}
            }
        }
        match (major, minor) {
            (Some(b"1"), Some(b"0")) => {}
            (None, None) if !other => return Ok(None),
            _ => {
                return Err(Fail::refused(
                    "sparse file in a PAX format other than 1.0 (only 1.0 is supported)",
                ));
            }
        }
        let real_size = real_size
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Fail::refused("sparse file without a valid GNU.sparse.realsize"))?;
        Ok(Some(Self { name, real_size }))
    }
}

/// Writes a PAX 1.0 sparse entry of `data_size` archive bytes into `file`:
/// reads the map, then each chunk at its offset; the file ends at
/// `real_size`, holes left unwritten.
pub(super) fn copy_pax_1_0(
    src: &mut impl Read,
    file: &mut File,
    data_size: u64,
    real_size: u64,
    buf: &mut [u8],
) -> Result<(), Fail> {
    let (chunks, map_bytes) = read_map(src)?;
    let mut end = 0u64;
    let mut total = map_bytes;
    for &(offset, size) in &chunks {
        let chunk_end = offset
            .checked_add(size)
            .filter(|&e| offset >= end && e <= real_size)
            .ok_or_else(|| Fail::refused("sparse map has overlapping or out-of-range chunks"))?;
        end = chunk_end;
        total = total
            .checked_add(size)
            .filter(|&t| t <= data_size)
            .ok_or_else(|| Fail::refused("sparse map lists more data than the entry holds"))?;
    }
    if total != data_size {
        return Err(Fail::refused(
            "sparse map lists less data than the entry holds",
        ));
    }
    for (offset, size) in chunks {
        file.seek(SeekFrom::Start(offset)).map_err(Fail::Io)?;
        copy_exact(src, file, size, buf)?;
    }
    file.set_len(real_size).map_err(Fail::Io)
}

/// Reads the map at the start of the data: the number of chunks, then an
/// offset and a size for each, one decimal number per line, padded to a
/// multiple of 512 bytes. Returns the chunks and the bytes the map took.
fn read_map(src: &mut impl Read) -> Result<(Vec<(u64, u64)>, u64), Fail> {
    let mut block = [0u8; BLOCK];
    let mut pos = BLOCK;
    let mut consumed = 0u64;
    let mut next_number = |src: &mut dyn Read| -> Result<u64, Fail> {
        let mut value: u64 = 0;
        let mut digits = 0;
        loop {
            if pos == BLOCK {
                if consumed >= MAX_METADATA_BYTES {
                    return Err(Fail::refused("sparse map is too large"));
                }
                src.read_exact(&mut block).map_err(Fail::Read)?;
                consumed += BLOCK as u64;
                pos = 0;
            }
            let b = block[pos];
            pos += 1;
            match b {
                b'0'..=b'9' if digits < 20 => {
                    value = value
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(b - b'0')))
                        .ok_or_else(|| Fail::refused("sparse map number out of range"))?;
                    digits += 1;
                }
                b'\n' if digits > 0 => return Ok(value),
                _ => return Err(Fail::refused("malformed sparse map")),
            }
        }
    };
    let count = next_number(src)?;
    let mut chunks = Vec::new();
    for _ in 0..count {
        let offset = next_number(src)?;
        let size = next_number(src)?;
        chunks.push((offset, size));
    }
    Ok((chunks, consumed))
}

/// Copies exactly `size` bytes, seeking over blocks that are all zeros
/// instead of writing them, and sets the length at the end (a trailing
/// hole).
pub(super) fn copy_skipping_zeros(
    src: &mut impl Read,
    file: &mut File,
    size: u64,
    buf: &mut [u8],
) -> Result<(), Fail> {
    let mut left = size;
    let mut at = 0u64;
    while left > 0 {
        let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(Fail::Read(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "layer ends inside a file",
                )));
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Fail::Read(e)),
        };
        for chunk in buf[..n].chunks(4096) {
            if chunk.iter().all(|&b| b == 0) {
                file.seek(SeekFrom::Current(chunk.len() as i64))
                    .map_err(Fail::Io)?;
            } else {
                file.write_all(chunk).map_err(Fail::Io)?;
            }
        }
        left -= n as u64;
        at += n as u64;
    }
    file.set_len(at).map_err(Fail::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(pairs: &[(&'static str, &'static str)]) -> Result<Option<PaxSparse>, Fail> {
        PaxSparse::from_records(pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
    }

    #[test]
    fn pax_records() {
        let s = records(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", "d/sparse"),
            ("GNU.sparse.realsize", "67108864"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.name.as_deref(), Some(&b"d/sparse"[..]));
        assert_eq!(s.real_size, 64 << 20);
        assert!(records(&[("path", "x")]).unwrap().is_none());
        for bad in [
            &[("GNU.sparse.size", "10"), ("GNU.sparse.map", "0,10")][..],
            &[("GNU.sparse.major", "0"), ("GNU.sparse.minor", "1")][..],
            &[("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")][..],
        ] {
            assert!(matches!(records(bad), Err(Fail::Refused(_))), "{bad:?}");
        }
    }

    fn map(text: &str) -> Vec<u8> {
        let mut v = text.as_bytes().to_vec();
        v.resize(v.len().div_ceil(BLOCK) * BLOCK, 0);
        v
    }

    #[test]
    fn maps() {
        let m = map("2\n0\n3\n1000\n2\n");
        let (chunks, used) = read_map(&mut &m[..]).unwrap();
        assert_eq!(chunks, vec![(0, 3), (1000, 2)]);
        assert_eq!(used, 512);
        for bad in [
            "2\n0\n",
            "x\n",
            "1\n\n5\n",
            "1\n99999999999999999999999\n1\n",
        ] {
            assert!(read_map(&mut &map(bad)[..]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chunks_are_written_at_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = map("2\n0\n3\n8192\n2\n");
        data.extend_from_slice(b"abcde");
        let mut file = File::create(dir.path().join("f")).unwrap();
        let mut buf = vec![0; 64];
        copy_pax_1_0(
            &mut &data[..],
            &mut file,
            data.len() as u64,
            10_000,
            &mut buf,
        )
        .unwrap();
        let got = std::fs::read(dir.path().join("f")).unwrap();
        assert_eq!(got.len(), 10_000);
        assert_eq!(&got[..3], b"abc");
        assert_eq!(&got[8192..8194], b"de");
        assert!(got[3..8192].iter().all(|&b| b == 0));
        // A chunk beyond the real size, or data the map does not account for.
        let mut f = File::create(dir.path().join("g")).unwrap();
        let r = copy_pax_1_0(&mut &data[..], &mut f, data.len() as u64, 8193, &mut buf);
        assert!(matches!(r, Err(Fail::Refused(_))));
        let r = copy_pax_1_0(
            &mut &data[..],
            &mut f,
            data.len() as u64 + 1,
            10_000,
            &mut buf,
        );
        assert!(matches!(r, Err(Fail::Refused(_))));
    }
}
