//! Pure codecs for the volume group's on-disk format: bytes in, structures out, no I/O.
//!
//! Every device of a group starts with a 4 MiB metadata area; extents follow it, aligned to
//! 4 MiB on the device.
//!
//! ```text
//! device byte offset
//! 0        label (512 bytes used of a 4 KiB block)      all integers little-endian
//! 4 KiB    zero (signatures of earlier contents are wiped at labelling)
//! 64 KiB   metadata slot 0 (1984 KiB)  ┐ double buffer: seq n lives in slot n % 2, so writing
//! 2 MiB    metadata slot 1 (1984 KiB)  ┘ seq n+1 never touches the copy with seq n
//! 4 MiB    extent 0 | extent 1 | ...   extent_size bytes each (default 4 MiB); tail unused
//!
//! label                                   metadata slot
//! 0   magic "LAMINAVG"                     0   magic "LAMVGMDA"
//! 8   crc32c of bytes 12..512              8   crc32c of bytes 12..32+len
//! 12  version (1)                          12  version (1)
//! 16  vg uuid [16]                         16  seq (u64; 0 = never written)
//! 32  device uuid [16]                     24  len (u32, body bytes)
//! 48  device index (u32)                   28  reserved (0)
//! 52  reserved (0)                         32  body: the group metadata as JSON text
//! 56  device size (bytes, at labelling)
//! 64  extent size (bytes)
//! 72  data start (bytes: extent 0)
//! 80  slot 0 offset   88 slot 1 offset   96 slot size
//! 104 zero to 512
//! ```
//!
//! The body is text, as LVM keeps its own VG metadata: small, diffable in a hex dump, and easy
//! to extend. Every device carries the same body, so any one device tells the whole group;
//! readers take the valid slot with the highest seq across all devices.

use super::config::PoolConfig;
use crate::pool::NameTable;
use serde::{Deserialize, Serialize};
use std::fmt;

pub const LABEL_MAGIC: &[u8; 8] = b"LAMINAVG";
pub const SLOT_MAGIC: &[u8; 8] = b"LAMVGMDA";
pub const FORMAT_VERSION: u32 = 1;
pub const LABEL_SIZE: usize = 512;
pub const SLOT_HEADER_SIZE: usize = 32;
pub const SLOT0_OFFSET: u64 = 64 << 10;
pub const SLOT_SIZE: u64 = 1984 << 10;
pub const SLOT1_OFFSET: u64 = SLOT0_OFFSET + SLOT_SIZE;
/// Where extents start on every device: the metadata area is the first 4 MiB.
pub const DATA_START: u64 = 4 << 20;
pub const DEFAULT_EXTENT_SIZE: u64 = 4 << 20;

/// A 128-bit identifier, printed as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A random uuid from the kernel's generator.
    pub fn random() -> std::io::Result<Self> {
        use std::io::Read;
        let mut b = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(Self(b))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

impl Serialize for Uuid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut b = [0u8; 16];
        hex::decode_to_slice(&s, &mut b).map_err(serde::de::Error::custom)?;
        Ok(Uuid(b))
    }
}

/// A count or index of extents.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Extents(pub u64);

impl fmt::Display for Extents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The per-device label at offset 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub vg_uuid: Uuid,
    pub device_uuid: Uuid,
    pub device_index: u32,
    pub device_size: u64,
    pub extent_size: u64,
    pub data_start: u64,
    pub slots: [u64; 2],
    pub slot_size: u64,
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn uuid_at(b: &[u8], off: usize) -> Uuid {
    let mut u = [0u8; 16];
    u.copy_from_slice(&b[off..off + 16]);
    Uuid(u)
}

/// Why a label or slot did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("too short: {0} bytes")]
    Short(usize),
    #[error("bad magic")]
    Magic,
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("unsupported version {0}")]
    Version(u32),
    #[error("never written")]
    Empty,
    #[error("bad field: {0}")]
    Field(String),
}

impl Label {
    pub fn new(vg_uuid: Uuid, device_uuid: Uuid, index: u32, size: u64, extent_size: u64) -> Self {
        Self {
            vg_uuid,
            device_uuid,
            device_index: index,
            device_size: size,
            extent_size,
            data_start: DATA_START,
            slots: [SLOT0_OFFSET, SLOT1_OFFSET],
            slot_size: SLOT_SIZE,
        }
    }

    /// Whole extents this device holds after its metadata area.
    pub fn extents(&self) -> Extents {
        Extents(self.device_size.saturating_sub(self.data_start) / self.extent_size.max(1))
    }

    pub fn encode(&self) -> [u8; LABEL_SIZE] {
        let mut b = [0u8; LABEL_SIZE];
        b[0..8].copy_from_slice(LABEL_MAGIC);
        put_u32(&mut b, 12, FORMAT_VERSION);
        b[16..32].copy_from_slice(&self.vg_uuid.0);
        b[32..48].copy_from_slice(&self.device_uuid.0);
        put_u32(&mut b, 48, self.device_index);
        put_u64(&mut b, 56, self.device_size);
        put_u64(&mut b, 64, self.extent_size);
        put_u64(&mut b, 72, self.data_start);
        put_u64(&mut b, 80, self.slots[0]);
        put_u64(&mut b, 88, self.slots[1]);
        put_u64(&mut b, 96, self.slot_size);
        let crc = crc32c::crc32c(&b[12..]);
        put_u32(&mut b, 8, crc);
        b
    }

    /// True when `b` starts with the label magic (checked before anything else).
    pub fn has_magic(b: &[u8]) -> bool {
        b.len() >= 8 && &b[0..8] == LABEL_MAGIC
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < LABEL_SIZE {
            return Err(FormatError::Short(b.len()));
        }
        let b = &b[..LABEL_SIZE];
        if !Self::has_magic(b) {
            return Err(FormatError::Magic);
        }
        let stored = get_u32(b, 8);
        let computed = crc32c::crc32c(&b[12..]);
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        let version = get_u32(b, 12);
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version));
        }
        let label = Self {
            vg_uuid: uuid_at(b, 16),
            device_uuid: uuid_at(b, 32),
            device_index: get_u32(b, 48),
            device_size: get_u64(b, 56),
            extent_size: get_u64(b, 64),
            data_start: get_u64(b, 72),
            slots: [get_u64(b, 80), get_u64(b, 88)],
            slot_size: get_u64(b, 96),
        };
        label.check()?;
        Ok(label)
    }

    fn check(&self) -> Result<(), FormatError> {
        let bad = |what: &str| Err(FormatError::Field(what.to_owned()));
        if self.extent_size < 4096 || !self.extent_size.is_multiple_of(4096) {
            return bad("extent size must be a positive multiple of 4096");
        }
        if (self.slot_size as usize) <= SLOT_HEADER_SIZE || self.slot_size > 64 << 20 {
            return bad("slot size out of range");
        }
        for s in self.slots {
            match s.checked_add(self.slot_size) {
                Some(end) if s >= LABEL_SIZE as u64 && end <= self.data_start => {}
                _ => return bad("metadata slot outside the metadata area"),
            }
        }
        if self.slots[0].abs_diff(self.slots[1]) < self.slot_size {
            return bad("metadata slots overlap");
        }
        Ok(())
    }
}

/// One metadata slot's contents: the sequence number and the group metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub seq: u64,
    pub meta: GroupMeta,
}

impl Slot {
    /// Encodes header and body; the caller writes the result at the slot offset. Fails only if
    /// the body would not fit in `slot_size`.
    pub fn encode(&self, slot_size: u64) -> Result<Vec<u8>, FormatError> {
        let body = serde_json::to_vec(&self.meta).map_err(|e| FormatError::Field(e.to_string()))?;
        if (SLOT_HEADER_SIZE + body.len()) as u64 > slot_size || body.len() > u32::MAX as usize {
            return Err(FormatError::Field(format!(
                "group metadata of {} bytes does not fit a {slot_size}-byte slot",
                body.len()
            )));
        }
        let mut b = vec![0u8; SLOT_HEADER_SIZE + body.len()];
        b[0..8].copy_from_slice(SLOT_MAGIC);
        put_u32(&mut b, 12, FORMAT_VERSION);
        put_u64(&mut b, 16, self.seq);
        put_u32(&mut b, 24, body.len() as u32);
        b[SLOT_HEADER_SIZE..].copy_from_slice(&body);
        let crc = crc32c::crc32c(&b[12..]);
        put_u32(&mut b, 8, crc);
        // Round up to whole 4 KiB blocks so the write is block-aligned on real devices.
        let padded = b.len().div_ceil(4096) * 4096;
        b.resize(padded.min(slot_size as usize), 0);
        Ok(b)
    }

    /// Length of the header plus body a slot whose first 32 bytes are `header` occupies.
    pub fn total_len(header: &[u8]) -> Option<usize> {
        if header.len() < SLOT_HEADER_SIZE || &header[0..8] != SLOT_MAGIC {
            return None;
        }
        Some(SLOT_HEADER_SIZE + get_u32(header, 24) as usize)
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < SLOT_HEADER_SIZE {
            return Err(FormatError::Short(b.len()));
        }
        if b[0..SLOT_HEADER_SIZE].iter().all(|&x| x == 0) {
            return Err(FormatError::Empty);
        }
        let total = Self::total_len(b).ok_or(FormatError::Magic)?;
        if b.len() < total {
            return Err(FormatError::Short(b.len()));
        }
        let stored = get_u32(b, 8);
        let computed = crc32c::crc32c(&b[12..total]);
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        let version = get_u32(b, 12);
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version));
        }
        let seq = get_u64(b, 16);
        let meta: GroupMeta = serde_json::from_slice(&b[SLOT_HEADER_SIZE..total])
            .map_err(|e| FormatError::Field(e.to_string()))?;
        meta.validate()?;
        Ok(Self { seq, meta })
    }
}

/// A run of extents on one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Index into [`GroupMeta::devices`].
    pub device: u32,
    pub start: Extents,
    pub len: Extents,
}

impl Segment {
    pub fn end(&self) -> u64 {
        self.start.0 + self.len.0
    }
}

/// One device as the group metadata records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub uuid: Uuid,
    pub extents: Extents,
}

/// Names of the two logical volumes of the pool, after LVM's hidden `_tmeta`/`_tdata`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegionKind {
    Metadata,
    Data,
}

impl RegionKind {
    pub fn name(self) -> &'static str {
        match self {
            RegionKind::Metadata => "tmeta",
            RegionKind::Data => "tdata",
        }
    }
}

/// The whole group: devices, the two regions and the pool's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    pub vg_uuid: Uuid,
    pub extent_size: u64,
    pub devices: Vec<DeviceEntry>,
    pub tmeta: Vec<Segment>,
    pub tdata: Vec<Segment>,
    pub config: PoolConfig,
    /// The pool's thin-volume name tables: the committed transaction's and at most one newer
    /// (see [`super::vgpool`]).
    #[serde(default)]
    pub names: Vec<NameTable>,
}

impl GroupMeta {
    pub fn region(&self, kind: RegionKind) -> &[Segment] {
        match kind {
            RegionKind::Metadata => &self.tmeta,
            RegionKind::Data => &self.tdata,
        }
    }

    pub fn region_mut(&mut self, kind: RegionKind) -> &mut Vec<Segment> {
        match kind {
            RegionKind::Metadata => &mut self.tmeta,
            RegionKind::Data => &mut self.tdata,
        }
    }

    pub fn total_extents(&self) -> Extents {
        Extents(self.devices.iter().map(|d| d.extents.0).sum())
    }

    pub fn region_extents(&self, kind: RegionKind) -> Extents {
        Extents(self.region(kind).iter().map(|s| s.len.0).sum())
    }

    /// Free runs of extents, in device then extent order, merged where adjacent.
    pub fn free_runs(&self) -> Vec<Segment> {
        let mut free = Vec::new();
        for (i, dev) in self.devices.iter().enumerate() {
            let mut used: Vec<(u64, u64)> = self
                .tmeta
                .iter()
                .chain(&self.tdata)
                .filter(|s| s.device as usize == i)
                .map(|s| (s.start.0, s.end()))
                .collect();
            used.sort_unstable();
            let mut at = 0;
            for (start, end) in used {
                if start > at {
                    free.push(Segment {
                        device: i as u32,
                        start: Extents(at),
                        len: Extents(start - at),
                    });
                }
                at = at.max(end);
            }
            if dev.extents.0 > at {
                free.push(Segment {
                    device: i as u32,
                    start: Extents(at),
                    len: Extents(dev.extents.0 - at),
                });
            }
        }
        free
    }

    pub fn free_extents(&self) -> Extents {
        Extents(self.free_runs().iter().map(|s| s.len.0).sum())
    }

    /// Semantic checks a decoded body must pass: segments inside their devices, non-empty,
    /// no extent used twice, both regions present.
    pub fn validate(&self) -> Result<(), FormatError> {
        if self.extent_size < 4096 || !self.extent_size.is_multiple_of(4096) {
            return Err(FormatError::Field(format!(
                "extent size {} is not a multiple of 4096",
                self.extent_size
            )));
        }
        if self.devices.is_empty() {
            return Err(FormatError::Field("no devices".into()));
        }
        if self.tmeta.is_empty() || self.tdata.is_empty() {
            return Err(FormatError::Field("a pool region is empty".into()));
        }
        self.devices
            .iter()
            .try_fold(0u64, |acc, d| acc.checked_add(d.extents.0))
            .and_then(|n| n.checked_mul(self.extent_size))
            .and_then(|n| n.checked_add(DATA_START))
            .ok_or_else(|| FormatError::Field("group size overflows".into()))?;
        // Later arithmetic (sums, byte offsets) relies on the whole group fitting in u64 bytes.
        let mut spans: Vec<(u32, u64, u64)> = Vec::new();
        for s in self.tmeta.iter().chain(&self.tdata) {
            let dev = self.devices.get(s.device as usize).ok_or_else(|| {
                FormatError::Field(format!(
                    "segment names device {} of {}",
                    s.device,
                    self.devices.len()
                ))
            })?;
            let end = s
                .start
                .0
                .checked_add(s.len.0)
                .ok_or_else(|| FormatError::Field("segment end overflows".into()))?;
            if s.len.0 == 0 || end > dev.extents.0 {
                return Err(FormatError::Field(format!(
                    "segment {}:{}+{} outside device of {} extents",
                    s.device, s.start, s.len, dev.extents
                )));
            }
            spans.push((s.device, s.start.0, end));
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[0].0 == w[1].0 && w[1].1 < w[0].2 {
                return Err(FormatError::Field(format!(
                    "extents {}:{} are used twice",
                    w[1].0, w[1].1
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
