//! The one error shape of lamina's libraries (after cloud-hypervisor's `block` errors): a
//! small matchable kind, the context (what was being done, where), and the cause kept as the
//! source. `Display` prints the kind and the context and never the source again; whoever
//! prints an error for a person prints the chain ([`chain`]).

/// Declares an error type of the shared shape over a `Copy + Display` kind:
///
/// ```
/// #[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// pub enum Kind { NotFound }
/// impl std::fmt::Display for Kind {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("not found")
///     }
/// }
/// units::error_type!(
///     /// What went wrong.
///     pub struct MyError(Kind);
/// );
/// let e = MyError::with_source(Kind::NotFound, "opening v1", std::io::Error::other("gone"));
/// assert_eq!(e.to_string(), "not found: opening v1");
/// assert_eq!(units::chain(&e), "not found: opening v1: gone");
/// ```
#[macro_export]
macro_rules! error_type {
    ($(#[$doc:meta])* $vis:vis struct $name:ident($kind:ty);) => {
        $(#[$doc])*
        #[derive(Debug)]
        $vis struct $name {
            kind: $kind,
            context: String,
            source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
        }

        impl $name {
            pub fn new(kind: $kind, context: impl Into<String>) -> Self {
                Self { kind, context: context.into(), source: None }
            }

            /// An error caused by `source`; `context` says what was being done.
            pub fn with_source(
                kind: $kind,
                context: impl Into<String>,
                source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
            ) -> Self {
                Self { kind, context: context.into(), source: Some(source.into()) }
            }

            pub fn kind(&self) -> $kind {
                self.kind
            }

            pub fn context(&self) -> &str {
                &self.context
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                if self.context.is_empty() {
                    write!(f, "{}", self.kind)
                } else {
                    write!(f, "{}: {}", self.kind, self.context)
                }
            }
        }

        impl std::error::Error for $name {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
            }
        }
    };
}

/// An error and its causes on one line (`a: b: c`), skipping a cause whose text the line
/// already holds (errors from outside the shared shape may repeat their source).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !line.contains(&t) {
            line.push_str(": ");
            line.push_str(&t);
        }
        cur = s.source();
    }
    line
}
