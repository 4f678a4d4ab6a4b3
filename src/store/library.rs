//! The function library in `lua/sessions.lua`, named after a hash of its
//! source.

use sha2::{Digest, Sha256};

const SOURCE: &str = include_str!("../../lua/sessions.lua");
const PLACEHOLDER: &str = "TRS_LIB";

/// The library's registered source and the names of its functions.
#[derive(Debug)]
pub(crate) struct Library {
    pub(crate) name: String,
    pub(crate) source: String,
    pub(crate) load: String,
    pub(crate) save: String,
    pub(crate) rotate: String,
    pub(crate) delete: String,
    pub(crate) retire: String,
    pub(crate) list: String,
    pub(crate) revoke: String,
}

impl Library {
    /// `trs_` + the first 16 hex digits of SHA-256 of the source file: a
    /// changed library gets a new name, so versions never replace each other.
    /// Function names are global in Redis, so they carry the same name.
    pub(crate) fn new() -> Library {
        let digest = Sha256::digest(SOURCE.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("trs_{hex}");
        Library {
            source: SOURCE.replace(PLACEHOLDER, &name),
            load: format!("{name}_load"),
            save: format!("{name}_save"),
            rotate: format!("{name}_rotate"),
            delete: format!("{name}_delete"),
            retire: format!("{name}_retire"),
            list: format!("{name}_list"),
            revoke: format!("{name}_revoke"),
            name,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_carry_the_hash_and_the_source_its_name() {
        let lib = super::Library::new();
        assert_eq!(lib.name.len(), 4 + 16);
        assert!(
            lib.source
                .starts_with(&format!("#!lua name={}\n", lib.name))
        );
        assert!(!lib.source.contains(super::PLACEHOLDER));
        assert!(lib.source.contains(&format!("'{}'", lib.save)));
    }
}
