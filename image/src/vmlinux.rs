//! Extracts the uncompressed `vmlinux` ELF from a bzImage whose payload is LZ4 (legacy frame),
//! so QEMU can boot it through the PVH entry note, skipping firmware and decompression.
//!
//! LZ4 legacy frame: magic `02 21 4c 18`, then blocks of `u32 LE compressed length | data`,
//! each decompressing to at most 8 MiB; the frame ends where a length no longer fits (the
//! kernel appends the 4-byte uncompressed size after the payload).

use thiserror::Error;

const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
const LEGACY_BLOCK: usize = 8 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum VmlinuxError {
    #[error("bzImage: no LZ4 legacy payload that decompresses to an ELF file")]
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

/// Returns the vmlinux ELF embedded in `bzimage`.
pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>, VmlinuxError> {
    let mut from = 0;
    while let Some(pos) = bzimage[from..].windows(4).position(|w| w == LZ4_LEGACY_MAGIC) {
        let start = from + pos + 4;
        if let Some(elf) = legacy_frame(&bzimage[start..]) {
            if elf.starts_with(b"\x7fELF") {
                return Ok(elf);
            }
        }
        from = start;
    }
    Err(VmlinuxError::NotFound)
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

    #[test]
    fn rt_finds_the_elf_after_a_decoy() {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..100_000u32).map(|i| (i % 251) as u8));
        let mut image = b"MZ header stuff".to_vec();
        image.extend_from_slice(&legacy(b"not an elf at all"));
        image.extend_from_slice(&legacy(&elf));
        image.extend_from_slice(&0xffff_fff0u32.to_le_bytes()); // trailing size field
        assert_eq!(extract(&image).unwrap(), elf);
    }

    #[test]
    fn no_payload_is_an_error() {
        assert_eq!(extract(b"plain bytes"), Err(VmlinuxError::NotFound));
        let mut junk = LZ4_LEGACY_MAGIC.to_vec();
        junk.extend_from_slice(&[5, 0, 0, 0, 1, 2, 3, 4, 5]);
        assert_eq!(extract(&junk), Err(VmlinuxError::NotFound));
    }
}
