//! What this host supports, per backend and confinement layer, for `cell doctor`.

use abi::backend::Layer;

/// Confinement layers each backend can provide on this host.
pub fn layers() -> Vec<(&'static str, Vec<Layer>)> {
    vec![(
        "subinterp",
        vec![Layer {
            name: "interpreter".into(),
            active: true,
            detail: "own engine, scope and limits inside the supervisor process".into(),
        }],
    )]
}
