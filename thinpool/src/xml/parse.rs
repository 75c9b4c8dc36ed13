//! Parsing thin_restore XML with quick-xml. Refuses unknown elements and attributes, missing or
//! repeated attributes, bad numbers, and mappings that are not in strictly ascending order;
//! every error names the line and the element.

use std::collections::HashSet;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::{Device, Metadata, Run};
use crate::pdata::disk::{MAX_DATA_BLOCK, TIME_MASK};
use crate::units::{DataBlock, ThinId, VirtBlock};

/// What was wrong with the XML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XmlErrorKind {
    /// Not well-formed XML.
    Syntax,
    /// An element that is not part of the format, or in the wrong place.
    UnknownElement,
    /// An attribute that is not part of the format.
    UnknownAttribute,
    /// A required attribute is absent or given twice.
    MissingAttribute,
    /// An attribute value is not a number in range.
    BadValue,
    /// Mappings are not in strictly ascending virtual-block order, or devices repeat.
    Order,
    /// The document ended early or has text where elements belong.
    Structure,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("XML line {line}, <{element}>: {message}")]
pub struct XmlError {
    pub kind: XmlErrorKind,
    pub line: usize,
    pub element: String,
    pub message: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    Superblock,
    Device,
    Mapping,
    Done,
}

struct Parser<'x> {
    xml: &'x str,
    /// Byte offset where the current event started, for line numbers.
    pos: usize,
}

impl Parser<'_> {
    fn line(&self) -> usize {
        let end = self.pos.min(self.xml.len());
        self.xml.as_bytes()[..end].iter().filter(|&&c| c == b'\n').count() + 1
    }

    fn err(&self, kind: XmlErrorKind, element: &str, message: impl Into<String>) -> XmlError {
        XmlError { kind, line: self.line(), element: element.to_owned(), message: message.into() }
    }

    /// The attributes of `e`, checked against `allowed`, in `allowed` order.
    fn attrs(
        &self,
        e: &BytesStart<'_>,
        name: &str,
        allowed: &[&str],
    ) -> Result<Vec<Option<String>>, XmlError> {
        let mut out = vec![None; allowed.len()];
        for a in e.attributes() {
            let a = a.map_err(|err| self.err(XmlErrorKind::Syntax, name, err.to_string()))?;
            let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
            let Some(i) = allowed.iter().position(|k| *k == key) else {
                return Err(self.err(
                    XmlErrorKind::UnknownAttribute,
                    name,
                    format!("unknown attribute {key:?}"),
                ));
            };
            if out[i].is_some() {
                return Err(self.err(
                    XmlErrorKind::MissingAttribute,
                    name,
                    format!("attribute {key:?} is given twice"),
                ));
            }
            let v = a
                .unescape_value()
                .map_err(|err| self.err(XmlErrorKind::Syntax, name, err.to_string()))?;
            out[i] = Some(v.into_owned());
        }
        Ok(out)
    }

    fn required<'v>(
        &self,
        vals: &'v [Option<String>],
        allowed: &[&str],
        i: usize,
        name: &str,
    ) -> Result<&'v str, XmlError> {
        vals[i].as_deref().ok_or_else(|| {
            self.err(
                XmlErrorKind::MissingAttribute,
                name,
                format!("attribute {:?} is required", allowed[i]),
            )
        })
    }

    fn number(&self, v: &str, attr: &str, name: &str, max: u64) -> Result<u64, XmlError> {
        match v.trim().parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(self.err(
                XmlErrorKind::BadValue,
                name,
                format!("attribute {attr:?} is {v:?}, not a number up to {max}"),
            )),
        }
    }

    fn num(
        &self,
        vals: &[Option<String>],
        allowed: &[&str],
        i: usize,
        name: &str,
        max: u64,
    ) -> Result<u64, XmlError> {
        let v = self.required(vals, allowed, i, name)?;
        self.number(v, allowed[i], name, max)
    }

    fn superblock(&self, e: &BytesStart<'_>) -> Result<Metadata, XmlError> {
        const A: &[&str] = &[
            "uuid",
            "time",
            "transaction",
            "flags",
            "version",
            "data_block_size",
            "nr_data_blocks",
            "metadata_snap",
        ];
        let n = "superblock";
        let v = self.attrs(e, n, A)?;
        let opt = |i: usize| -> Result<Option<u64>, XmlError> {
            v[i].as_deref().map(|s| self.number(s, A[i], n, u32::MAX.into())).transpose()
        };
        Ok(Metadata {
            uuid: self.required(&v, A, 0, n)?.to_owned(),
            time: self.num(&v, A, 1, n, u32::MAX.into())? as u32,
            transaction: self.num(&v, A, 2, n, u64::MAX)?,
            flags: opt(3)?.unwrap_or(0) as u32,
            version: opt(4)?.map(|x| x as u32),
            data_block_size: self.num(&v, A, 5, n, u32::MAX.into())? as u32,
            nr_data_blocks: self.num(&v, A, 6, n, MAX_DATA_BLOCK + 1)?,
            metadata_snap: v[7]
                .as_deref()
                .map(|s| self.number(s, A[7], n, u64::MAX))
                .transpose()?,
            devices: Vec::new(),
        })
    }

    fn device(&self, e: &BytesStart<'_>) -> Result<Device, XmlError> {
        const A: &[&str] =
            &["dev_id", "mapped_blocks", "transaction", "creation_time", "snap_time"];
        let n = "device";
        let v = self.attrs(e, n, A)?;
        Ok(Device {
            dev_id: ThinId(self.num(&v, A, 0, n, u32::MAX.into())?),
            mapped_blocks: self.num(&v, A, 1, n, u64::MAX)?,
            transaction: self.num(&v, A, 2, n, u64::MAX)?,
            creation_time: self.num(&v, A, 3, n, u32::MAX.into())? as u32,
            snap_time: self.num(&v, A, 4, n, u32::MAX.into())? as u32,
            mappings: Vec::new(),
        })
    }

    fn mapping(&self, e: &BytesStart<'_>, name: &str) -> Result<Run, XmlError> {
        let time_max = u64::from(TIME_MASK);
        let run = if name == "single_mapping" {
            const A: &[&str] = &["origin_block", "data_block", "time"];
            let v = self.attrs(e, name, A)?;
            Run {
                origin: VirtBlock(self.num(&v, A, 0, name, u64::MAX)?),
                data: DataBlock(self.num(&v, A, 1, name, MAX_DATA_BLOCK)?),
                len: 1,
                time: self.num(&v, A, 2, name, time_max)? as u32,
            }
        } else {
            const A: &[&str] = &["origin_begin", "data_begin", "length", "time"];
            let v = self.attrs(e, name, A)?;
            let run = Run {
                origin: VirtBlock(self.num(&v, A, 0, name, u64::MAX)?),
                data: DataBlock(self.num(&v, A, 1, name, MAX_DATA_BLOCK)?),
                len: self.num(&v, A, 2, name, u64::MAX)?,
                time: self.num(&v, A, 3, name, time_max)? as u32,
            };
            let origin_ok = run.origin.0.checked_add(run.len).is_some();
            let data_ok = run.data.0.checked_add(run.len).is_some_and(|e| e <= MAX_DATA_BLOCK + 1);
            if run.len == 0 || !origin_ok || !data_ok {
                return Err(self.err(
                    XmlErrorKind::BadValue,
                    name,
                    format!(
                        "a range of length {} from {} / {} does not fit",
                        run.len, run.origin, run.data
                    ),
                ));
            }
            run
        };
        Ok(run)
    }
}

/// Parses thin_dump XML (0.9.0 flat form) into the model.
pub fn parse(xml: &str) -> Result<Metadata, XmlError> {
    let mut p = Parser { xml, pos: 0 };
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    reader.config_mut().expand_empty_elements = true;
    let mut level = Level::Top;
    let mut md: Option<Metadata> = None;
    let mut dev: Option<Device> = None;
    let mut ids = HashSet::new();
    loop {
        let ev = match reader.read_event() {
            // Errors about an element name the line where its tag ends.
            Ok(ev) => {
                p.pos = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
                ev
            }
            Err(e) => {
                p.pos = usize::try_from(reader.error_position()).unwrap_or(usize::MAX);
                return Err(p.err(XmlErrorKind::Syntax, "?", e.to_string()));
            }
        };
        match ev {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match (level, name.as_str()) {
                    (Level::Top, "superblock") => {
                        md = Some(p.superblock(&e)?);
                        level = Level::Superblock;
                    }
                    (Level::Superblock, "device") => {
                        let d = p.device(&e)?;
                        if !ids.insert(d.dev_id) {
                            return Err(p.err(
                                XmlErrorKind::Order,
                                &name,
                                format!("device {} appears twice", d.dev_id),
                            ));
                        }
                        dev = Some(d);
                        level = Level::Device;
                    }
                    (Level::Device, "single_mapping" | "range_mapping") => {
                        let run = p.mapping(&e, &name)?;
                        let Some(d) = dev.as_mut() else {
                            return Err(p.err(XmlErrorKind::Structure, &name, "outside a device"));
                        };
                        if let Some(last) = d.mappings.last() {
                            // Ranges were checked not to overflow.
                            if run.origin.0 < last.origin.0 + last.len {
                                return Err(p.err(
                                    XmlErrorKind::Order,
                                    &name,
                                    format!(
                                        "virtual block {} of device {} comes after block {}: \
                                         mappings must be in ascending order",
                                        run.origin,
                                        d.dev_id,
                                        last.origin.0 + last.len - 1
                                    ),
                                ));
                            }
                        }
                        d.mappings.push(run);
                        level = Level::Mapping;
                    }
                    _ => {
                        let r#where = match level {
                            Level::Top => "at the top level",
                            Level::Superblock => "inside <superblock>",
                            Level::Device => "inside <device>",
                            Level::Mapping => "inside a mapping",
                            Level::Done => "after </superblock>",
                        };
                        return Err(p.err(
                            XmlErrorKind::UnknownElement,
                            &name,
                            format!("unknown or misplaced element {}", r#where),
                        ));
                    }
                }
            }
            Event::End(_) => {
                level = match level {
                    Level::Mapping => Level::Device,
                    Level::Device => {
                        if let (Some(m), Some(d)) = (md.as_mut(), dev.take()) {
                            m.devices.push(d);
                        }
                        Level::Superblock
                    }
                    Level::Superblock => Level::Done,
                    Level::Top | Level::Done => {
                        return Err(p.err(XmlErrorKind::Structure, "?", "unexpected closing tag"))
                    }
                };
            }
            Event::Text(t) if !t.iter().all(|c| c.is_ascii_whitespace()) => {
                return Err(p.err(XmlErrorKind::Structure, "text", "text where elements belong"));
            }
            Event::CData(_) => {
                return Err(p.err(XmlErrorKind::Structure, "CDATA", "CDATA where elements belong"))
            }
            Event::Eof => break,
            // Declarations, comments, processing instructions and doctypes carry no data.
            _ => {}
        }
    }
    match (level, md) {
        (Level::Done, Some(md)) => Ok(md),
        _ => {
            Err(p.err(XmlErrorKind::Structure, "superblock", "document ends before </superblock>"))
        }
    }
}
