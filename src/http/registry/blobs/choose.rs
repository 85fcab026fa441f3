//! Which body a blob GET gets, from what is known of it: a pure decision,
//! so every case is a unit test.

/// What is known of a blob GET when its body is chosen.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Known {
    /// A HEAD: no body at all.
    pub head: bool,
    /// A JSON document (config, manifest, provenance), held in memory.
    pub json: bool,
    /// The whole blob, not a range: only a whole body can be checked
    /// against the digest.
    pub full: bool,
    /// The layer's bytes are in memory, verified before.
    pub hot: bool,
    /// The layer's files have the identity they had when its bytes last
    /// hashed to the digest.
    pub trusted: bool,
    /// This stream claimed to collect the layer's bytes for memory.
    pub collecting: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Strategy {
    Empty,
    /// A slice of the document.
    Json,
    /// The verified bytes in memory (`memory.rs`).
    FromMemory,
    /// A body that reads its own chunks, hashing nothing (`pulled.rs`).
    Pulled,
    /// Chunks through a channel, hashed and held back at the end until the
    /// digest matches, or collected for memory (`produced.rs`).
    Produced {
        verify: bool,
    },
}

pub(super) fn choose(k: Known) -> Strategy {
    if k.head {
        return Strategy::Empty;
    }
    if k.json {
        return Strategy::Json;
    }
    if k.full && k.hot {
        return Strategy::FromMemory;
    }
    // A range cannot be checked; a whole body is, unless its files are
    // as they were when it last hashed right.
    let verify = k.full && !k.trusted;
    if verify || k.collecting {
        Strategy::Produced { verify }
    } else {
        Strategy::Pulled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_get_gets_the_body_it_needs() {
        let whole = Known {
            full: true,
            ..Known::default()
        };
        let cases = [
            (
                Known {
                    head: true,
                    ..whole
                },
                Strategy::Empty,
            ),
            (
                Known {
                    head: true,
                    hot: true,
                    ..whole
                },
                Strategy::Empty,
            ),
            (
                Known {
                    json: true,
                    ..whole
                },
                Strategy::Json,
            ),
            (
                Known {
                    json: true,
                    full: false,
                    ..whole
                },
                Strategy::Json,
            ),
            (Known { hot: true, ..whole }, Strategy::FromMemory),
            // A first GET is hashed.
            (whole, Strategy::Produced { verify: true }),
            (
                Known {
                    collecting: true,
                    ..whole
                },
                Strategy::Produced { verify: true },
            ),
            // A trusted one is not, unless it is collected for memory.
            (
                Known {
                    trusted: true,
                    ..whole
                },
                Strategy::Pulled,
            ),
            (
                Known {
                    trusted: true,
                    collecting: true,
                    ..whole
                },
                Strategy::Produced { verify: false },
            ),
            // A range is never hashed, nor served from memory.
            (
                Known {
                    full: false,
                    ..whole
                },
                Strategy::Pulled,
            ),
            (
                Known {
                    full: false,
                    hot: true,
                    ..whole
                },
                Strategy::Pulled,
            ),
        ];
        for (known, want) in cases {
            assert_eq!(choose(known), want, "{known:?}");
        }
    }
}
