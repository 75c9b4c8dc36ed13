//! Extracts the uncompressed `vmlinux` ELF from a bzImage, so QEMU can boot it through the PVH
//! entry note, skipping firmware and decompression.
//!
//! Two payload formats are recognised (the kernel's `CONFIG_KERNEL_*` choice):
//! - Zstandard (Debian's 6.12 kernels): one frame, magic `28 b5 2f fd`; the kernel appends the
//!   4-byte uncompressed size after it, which a single-frame decoder ignores.
//! - LZ4 legacy frame (Debian's 6.1 kernels): magic `02 21 4c 18`, then blocks of
//!   `u32 LE compressed length | data`, each decompressing to at most 8 MiB; the frame ends where
//!   a length no longer fits.
//!
//! The bzImage's setup code is searched for each magic in turn; the first candidate that
//! decompresses to an ELF file wins (a magic can also occur by chance in code or data).

use std::io::Read;

use thiserror::Error;

const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
const LEGACY_BLOCK: usize = 8 << 20;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum VmlinuxError {
    #[error("bzImage: no Zstandard or LZ4 legacy payload that decompresses to an ELF file")]
    NotFound,
}

/// Decompresses one LZ4 legacy frame starting at `data` (after the magic).
fn legacy_frame(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut block = vec![0u8; LEGACY_BLOCK];
    while let Some(len) = data.get(..4) {
        if len == LZ4_LEGACY_MAGIC {
            data = &data[4..];
            continue;
        }
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(src) = data.get(4..4 + len) else { break };
        let n = lz4_flex::block::decompress_into(src, &mut block).ok()?;
        out.extend_from_slice(&block[..n]);
        data = &data[4 + len..];
    }
    (!out.is_empty()).then_some(out)
}

/// Decompresses the Zstandard frame starting at `data` (magic included).
fn zstd_frame(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut dec = zstd::stream::read::Decoder::with_buffer(data).ok()?.single_frame();
    dec.read_to_end(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}

/// Tries every occurrence of `magic` in `bzimage` with `decode` (given the bytes from the magic
/// on) and returns the first result that is an ELF file.
fn scan(
    bzimage: &[u8],
    magic: [u8; 4],
    decode: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let mut from = 0;
    while let Some(pos) = bzimage[from..].windows(4).position(|w| w == magic) {
        let start = from + pos;
        if let Some(elf) = decode(&bzimage[start..]) {
            if elf.starts_with(b"\x7fELF") {
                return Some(elf);
            }
        }
        from = start + 4;
    }
    None
}

/// Returns the vmlinux ELF embedded in `bzimage`.
pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>, VmlinuxError> {
    scan(bzimage, ZSTD_MAGIC, zstd_frame)
        .or_else(|| scan(bzimage, LZ4_LEGACY_MAGIC, |d| legacy_frame(&d[4..])))
        .ok_or(VmlinuxError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(payload: &[u8]) -> Vec<u8> {
        let mut v = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in payload.chunks(LEGACY_BLOCK) {
            let c = lz4_flex::block::compress(chunk);
            v.extend_from_slice(&(c.len() as u32).to_le_bytes());
            v.extend_from_slice(&c);
        }
        v
    }

    fn elf() -> Vec<u8> {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..100_000u32).map(|i| (i % 251) as u8));
        elf
    }

    #[test]
    fn rt_finds_the_elf_after_a_decoy() {
        let elf = elf();
        let mut image = b"MZ header stuff".to_vec();
        image.extend_from_slice(&legacy(b"not an elf at all"));
        image.extend_from_slice(&legacy(&elf));
        image.extend_from_slice(&0xffff_fff0u32.to_le_bytes()); // trailing size field
        assert_eq!(extract(&image).unwrap(), elf);
    }

    #[test]
    fn rt_zstd_payload_with_trailing_size() {
        let elf = elf();
        let mut image = b"MZ header stuff".to_vec();
        image.extend_from_slice(&ZSTD_MAGIC); // a stray magic that is no frame
        image.extend_from_slice(&zstd::encode_all(&b"not an elf"[..], 3).unwrap());
        image.extend_from_slice(&zstd::encode_all(elf.as_slice(), 19).unwrap());
        image.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        assert_eq!(extract(&image).unwrap(), elf);
    }

    #[test]
    fn no_payload_is_an_error() {
        assert_eq!(extract(b"plain bytes"), Err(VmlinuxError::NotFound));
        let mut junk = LZ4_LEGACY_MAGIC.to_vec();
        junk.extend_from_slice(&[5, 0, 0, 0, 1, 2, 3, 4, 5]);
        junk.extend_from_slice(&ZSTD_MAGIC);
        assert_eq!(extract(&junk), Err(VmlinuxError::NotFound));
    }
}
