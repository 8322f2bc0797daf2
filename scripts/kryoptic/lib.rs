//! Empty: this package exists so that cargo builds the kryoptic cdylib
//! (see Cargo.toml and scripts/kryoptic.sh).
