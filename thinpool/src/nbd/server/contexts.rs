//! Metadata contexts (NBD spec, "Metadata querying"): which names a client may list and
//! select for BLOCK_STATUS, and what each one reports.
//!
//! ```text
//! base:allocation            bit 0 HOLE, bit 1 ZERO                    (every export)
//! lamina:changed:BASE        bit 0: differs from volume BASE           (pool volumes)
//! qemu:dirty-bitmap:BASE     the same bitmap under QEMU's name: bit 0 = dirty
//!                            (qemu docs/interop/nbd.rst), so backup clients that read
//!                            QEMU's dirty bitmaps (virtnbdbackup, incus) read it unchanged
//! ```
//!
//! "Changed" compares mappings: a block mapped to the same data block in both volumes is
//! unchanged, so the bitmap of a volume against a snapshot of it marks exactly the blocks
//! written (or discarded) since the snapshot.

use crate::export::Export;

/// `base:allocation`'s name and the id it gets when selected.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;

const CHANGED: &str = "lamina:changed:";
const DIRTY: &str = "qemu:dirty-bitmap:";

/// What a selected context reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Context {
    Allocation,
    /// Blocks that differ from volume `base`.
    Changed {
        base: String,
    },
}

/// A context selected by SET_META_CONTEXT, with the id replies carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Selected {
    pub id: u32,
    pub context: Context,
}

fn parse(name: &str) -> Option<Context> {
    if name == BASE_ALLOCATION {
        return Some(Context::Allocation);
    }
    let base = name.strip_prefix(CHANGED).or_else(|| name.strip_prefix(DIRTY))?;
    (!base.is_empty()).then(|| Context::Changed { base: base.to_owned() })
}

/// The context names LIST_META_CONTEXT answers for `queries` on `export` (no query: all;
/// a namespace prefix such as `lamina:` or `qemu:dirty-bitmap:`: all of it; else exact).
pub(crate) fn list(export: &dyn Export, queries: &[String]) -> Vec<String> {
    let bases = export.change_bases();
    let mut all = vec![BASE_ALLOCATION.to_owned()];
    for b in &bases {
        all.push(format!("{CHANGED}{b}"));
        all.push(format!("{DIRTY}{b}"));
    }
    if queries.is_empty() {
        return all;
    }
    let prefix = |q: &str| matches!(q, "base:" | "lamina:" | "qemu:") || q == CHANGED || q == DIRTY;
    all.into_iter()
        .filter(|n| {
            queries.iter().any(|q| if prefix(q) { n.starts_with(q.as_str()) } else { n == q })
        })
        .collect()
}

/// The contexts SET_META_CONTEXT selects for `queries` on `export`, in query order, each
/// once, with ids (base:allocation keeps [`BASE_ALLOCATION_ID`]); unknown names and bases
/// that are not volumes are left out, as the spec asks.
pub(crate) fn select(export: &dyn Export, queries: &[String]) -> Vec<(String, Selected)> {
    let mut bases: Option<Vec<String>> = None;
    let mut out: Vec<(String, Selected)> = Vec::new();
    // 2, 3, ...: ids only have to be unique within the connection.
    let mut next_id = BASE_ALLOCATION_ID + 1;
    for q in queries {
        if out.iter().any(|(n, _)| n == q) {
            continue;
        }
        let Some(context) = parse(q) else { continue };
        let id = match &context {
            Context::Allocation => BASE_ALLOCATION_ID,
            Context::Changed { base } => {
                if !bases.get_or_insert_with(|| export.change_bases()).contains(base) {
                    continue;
                }
                next_id += 1;
                next_id - 1
            }
        };
        out.push((q.clone(), Selected { id, context }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::mem::MemExport;

    #[test]
    fn names_parse_into_contexts() {
        assert_eq!(parse("base:allocation"), Some(Context::Allocation));
        assert_eq!(parse("lamina:changed:s1"), Some(Context::Changed { base: "s1".into() }));
        assert_eq!(parse("qemu:dirty-bitmap:s1"), Some(Context::Changed { base: "s1".into() }));
        assert_eq!(parse("qemu:dirty-bitmap:"), None);
        assert_eq!(parse("qemu:allocation-depth"), None);
        assert_eq!(parse("base:"), None);
    }

    #[test]
    fn an_export_without_bases_offers_allocation_only() {
        let e = MemExport::new(4096);
        assert_eq!(list(&e, &[]), vec![BASE_ALLOCATION.to_owned()]);
        assert!(list(&e, &["lamina:".into()]).is_empty());
        let s = select(&e, &["lamina:changed:x".into(), BASE_ALLOCATION.into()]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].1, Selected { id: BASE_ALLOCATION_ID, context: Context::Allocation });
    }
}
