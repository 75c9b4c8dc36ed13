//! overlay2-style container layer store (issue: container layer store).
//!
//! Will hold: layers (`diff/`, `link`, `lower`, `work/`, `merged/`), images and containers as
//! atomic JSON, OCI / docker-save import and export, whiteouts, commit, quotas, the vfs
//! fallback, and the `layerstore` binary.
