//! The results on disk, so they survive a restart and can be read offline.
//!
//! redb rather than SQLite: pure Rust (no C library to build into the agent), one file,
//! ACID with copy-on-write B-trees, so a crash mid-save leaves the previous save intact.
//! Layout: table `endpoints`, endpoint name -> its counts as JSON (`EndpointStats`, whose
//! fields are only ever added to); table `meta`: `schema` (1) and `untracked_requests`;
//! table `settings`: `ignore`, the ignore rules added at run time (`IgnoreSpec` as JSON).
//! The file is opened for each load or save and closed after: redb lets one process hold a
//! file, and an offline reader (`mirror diff report --store`) may come between saves.
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};

use crate::{
    results::{EndpointStats, Results},
    IgnoreSpec,
};

/// What a store holds.
#[derive(Debug, Default)]
pub struct Saved {
    pub results: Results,
    /// Ignore rules added at run time (through the API), on top of the configured ones.
    pub ignore: IgnoreSpec,
}

const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
const SCHEMA: u64 = 1;

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {message}")]
    Db { path: String, message: String },
    #[error("{path}: endpoint {endpoint:?}: {error}")]
    Decode { path: String, endpoint: String, error: serde_json::Error },
    #[error("{path}: schema {found} is newer than this build's {SCHEMA}")]
    Schema { path: String, found: u64 },
}

/// The store at a path.
#[derive(Clone, Debug)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(path: impl Into<PathBuf>) -> Store {
        Store { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db { path: self.path.display().to_string(), message: e.to_string() }
    }

    /// The saved results and rules; `None` when there is no file yet.
    pub fn load(&self) -> Result<Option<Saved>, StoreError> {
        if !self.path.exists() {
            return Ok(None);
        }
        let db = Database::open(&self.path).map_err(|e| self.db_error(e))?;
        let txn = db.begin_read().map_err(|e| self.db_error(e))?;
        let mut saved = Saved::default();
        let results = &mut saved.results;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Some(saved)),
            Err(e) => return Err(self.db_error(e)),
        };
        let get = |key| meta.get(key).map(|v| v.map(|v| v.value()));
        let schema = get("schema").map_err(|e| self.db_error(e))?.unwrap_or(SCHEMA);
        if schema > SCHEMA {
            return Err(StoreError::Schema {
                path: self.path.display().to_string(),
                found: schema,
            });
        }
        results.untracked_requests =
            get("untracked_requests").map_err(|e| self.db_error(e))?.unwrap_or(0);
        let table = txn.open_table(ENDPOINTS).map_err(|e| self.db_error(e))?;
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (name, value) = entry.map_err(|e| self.db_error(e))?;
            let stats: EndpointStats =
                serde_json::from_slice(value.value()).map_err(|error| StoreError::Decode {
                    path: self.path.display().to_string(),
                    endpoint: name.value().to_string(),
                    error,
                })?;
            results.endpoints.insert(name.value().to_string(), stats);
        }
        if let Ok(settings) = txn.open_table(SETTINGS) {
            if let Some(v) = settings.get("ignore").map_err(|e| self.db_error(e))? {
                saved.ignore = serde_json::from_slice(v.value()).map_err(|e| self.db_error(e))?;
            }
        }
        Ok(Some(saved))
    }

    /// Replaces what is saved with `results` and the run-time `ignore` rules, in one
    /// transaction.
    pub fn save(&self, results: &Results, ignore: &IgnoreSpec) -> Result<(), StoreError> {
        let db = Database::create(&self.path).map_err(|e| self.db_error(e))?;
        let txn = db.begin_write().map_err(|e| self.db_error(e))?;
        txn.delete_table(ENDPOINTS).map_err(|e| self.db_error(e))?;
        {
            let mut table = txn.open_table(ENDPOINTS).map_err(|e| self.db_error(e))?;
            for (name, stats) in &results.endpoints {
                let json = serde_json::to_vec(stats).map_err(|e| self.db_error(e))?;
                table.insert(name.as_str(), json.as_slice()).map_err(|e| self.db_error(e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.db_error(e))?;
            meta.insert("schema", SCHEMA).map_err(|e| self.db_error(e))?;
            meta.insert("untracked_requests", results.untracked_requests)
                .map_err(|e| self.db_error(e))?;
            let mut settings = txn.open_table(SETTINGS).map_err(|e| self.db_error(e))?;
            let json = serde_json::to_vec(ignore).map_err(|e| self.db_error(e))?;
            settings.insert("ignore", json.as_slice()).map_err(|e| self.db_error(e))?;
        }
        txn.commit().map_err(|e| self.db_error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Caps, Comparison, FieldDiff, Kind, Thresholds};

    #[test]
    fn results_round_trip_and_a_new_save_replaces_the_old() {
        let dir = std::env::temp_dir().join(format!("mirror-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::new(dir.join("results.redb"));
        assert!(store.load().unwrap().is_none(), "no file yet");
        let mut r = Results::new(Caps::default());
        for ep in ["GET /a", "GET /b"] {
            r.offered(ep);
            let diff = FieldDiff { field: "body/x".into(), kind: Kind::Extra };
            r.record(
                ep,
                &Comparison {
                    candidate: vec![diff],
                    latency: [Some(5), None, Some(9)],
                    ..Default::default()
                },
            );
        }
        let ignore = IgnoreSpec { fields: vec!["body/id".into()], ..Default::default() };
        store.save(&r, &ignore).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.results.report(&Thresholds::default()), r.report(&Thresholds::default()));
        assert_eq!(back.ignore, ignore);
        r.clear();
        r.offered("GET /c");
        store.save(&r, &IgnoreSpec::default()).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.results.endpoints.keys().collect::<Vec<_>>(), ["GET /c"]);
        assert!(back.ignore.is_empty());
        std::fs::write(dir.join("junk"), b"not a database").unwrap();
        let junk = Store::new(dir.join("junk")).load().unwrap_err().to_string();
        assert!(junk.contains("junk"), "{junk}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
