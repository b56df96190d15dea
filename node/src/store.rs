//! The node's state: LDK's key-value store interface over SQLite (bundled,
//! nothing to install). One table; every write is a durable transaction
//! (WAL, `synchronous=FULL`) before it returns, as LDK's persistence
//! contract requires for channel monitors.
//!
//! rusqlite with the `bundled` feature was picked over a hand-rolled file
//! store: atomic multi-row transactions, crash safety and tooling for free.

use lightning::io;
use std::path::Path;
use std::sync::Mutex;

use lightning::util::persist::{
    KVStoreSync, KVSTORE_NAMESPACE_KEY_ALPHABET, KVSTORE_NAMESPACE_KEY_MAX_LEN,
};
use rusqlite::{params, Connection, OptionalExtension};

/// LDK's key-value store in one SQLite file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Writes that need only be durable with the next one (see
    /// [`SqliteStore::ride_along`]): primary, secondary, key, value or
    /// removal. The latest for a key wins.
    riders: Mutex<Vec<Rider>>,
}

/// One write waiting for the next: (primary, secondary, key, value or removal).
type Rider = (String, String, String, Option<Vec<u8>>);

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::Other, e.to_string())
}

fn check_name(what: &str, s: &str, may_be_empty: bool) -> io::Result<()> {
    let ok_len = s.len() <= KVSTORE_NAMESPACE_KEY_MAX_LEN && (may_be_empty || !s.is_empty());
    if !ok_len
        || !s
            .chars()
            .all(|c| KVSTORE_NAMESPACE_KEY_ALPHABET.contains(c))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid {what} {s:?}"),
        ));
    }
    Ok(())
}

fn check(primary: &str, secondary: &str, key: Option<&str>) -> io::Result<()> {
    check_name("primary namespace", primary, true)?;
    check_name("secondary namespace", secondary, true)?;
    if primary.is_empty() && !secondary.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "secondary namespace without a primary one",
        ));
    }
    if let Some(k) = key {
        check_name("key", k, false)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let conn =
            Connection::open(path).map_err(|e| io_err(format!("{}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(io_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(io_err)?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS kv (
                primary_ns TEXT NOT NULL, secondary_ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                PRIMARY KEY (primary_ns, secondary_ns, key))",
            [],
        )
        .map_err(io_err)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            riders: Mutex::new(Vec::new()),
        })
    }

    /// Has a key written (or with `None` removed) in the same transaction
    /// as the next write or removal, whichever thread makes it, and not
    /// before. Used for what must be durable no later than LDK's next
    /// monitor update, without a disk flush of its own.
    pub fn ride_along(&self, primary: &str, secondary: &str, key: &str, value: Option<Vec<u8>>) {
        let Ok(mut riders) = self.riders.lock() else {
            return;
        };
        riders.retain(|(p, s, k, _)| !(p == primary && s == secondary && k == key));
        riders.push((primary.into(), secondary.into(), key.into(), value));
    }

    /// Writes `primary/secondary/key` (or removes it) with every rider, in
    /// one transaction. Riders go back in the queue if it fails.
    fn put_with_riders(
        &self,
        primary: &str,
        secondary: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> io::Result<()> {
        check(primary, secondary, Some(key))?;
        let riders: Vec<Rider> = self
            .riders
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        let written = self.in_transaction(|tx| {
            for (p, s, k, v) in &riders {
                Self::put_in(tx, p, s, k, v.as_deref())?;
            }
            Self::put_in(tx, primary, secondary, key, value)
        });
        if written.is_err() && !riders.is_empty() {
            if let Ok(mut r) = self.riders.lock() {
                let newer = std::mem::replace(&mut *r, riders);
                for (p, s, k, v) in newer {
                    r.retain(|(p2, s2, k2, _)| !(*p2 == p && *s2 == s && *k2 == k));
                    r.push((p, s, k, v));
                }
            }
        }
        written
    }

    fn conn(&self) -> io::Result<std::sync::MutexGuard<'_, Connection>> {
        self.conn.lock().map_err(|_| io_err("store lock poisoned"))
    }

    /// Runs `f` in one SQLite transaction: everything it writes (the
    /// wallet's change set and key-value records) is durable together once
    /// this returns, or not at all.
    pub fn in_transaction<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> io::Result<T> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(io_err)?;
        let value = f(&tx).map_err(io_err)?;
        tx.commit().map_err(io_err)?;
        Ok(value)
    }

    /// Writes a key (or with `None` removes it) inside [`Self::in_transaction`].
    pub fn put_in(
        tx: &rusqlite::Transaction<'_>,
        primary: &str,
        secondary: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> rusqlite::Result<()> {
        check(primary, secondary, Some(key))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        match value {
            Some(v) => tx.execute(
                "INSERT INTO kv (primary_ns, secondary_ns, key, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (primary_ns, secondary_ns, key) DO UPDATE SET value = excluded.value",
                params![primary, secondary, key, v],
            ),
            None => tx.execute(
                "DELETE FROM kv WHERE primary_ns = ?1 AND secondary_ns = ?2 AND key = ?3",
                params![primary, secondary, key],
            ),
        }
        .map(|_| ())
    }
}

impl KVStoreSync for SqliteStore {
    fn read(&self, primary: &str, secondary: &str, key: &str) -> io::Result<Vec<u8>> {
        check(primary, secondary, Some(key))?;
        self.conn()?
            .query_row(
                "SELECT value FROM kv WHERE primary_ns = ?1 AND secondary_ns = ?2 AND key = ?3",
                params![primary, secondary, key],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()
            .map_err(io_err)?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{primary}/{secondary}/{key} not found"),
                )
            })
    }

    fn write(&self, primary: &str, secondary: &str, key: &str, buf: Vec<u8>) -> io::Result<()> {
        self.put_with_riders(primary, secondary, key, Some(&buf))
    }

    fn remove(&self, primary: &str, secondary: &str, key: &str, _lazy: bool) -> io::Result<()> {
        self.put_with_riders(primary, secondary, key, None)
    }

    fn list(&self, primary: &str, secondary: &str) -> io::Result<Vec<String>> {
        check(primary, secondary, None)?;
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare("SELECT key FROM kv WHERE primary_ns = ?1 AND secondary_ns = ?2")
            .map_err(io_err)?;
        let rows = stmt
            .query_map(params![primary, secondary], |r| r.get::<_, String>(0))
            .map_err(io_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_lists_removes_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("lnpd-kv-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.sqlite");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.write("monitors", "", "abc_0", vec![1, 2, 3]).unwrap();
            s.write("monitors", "", "abc_0", vec![4]).unwrap();
            s.write("monitors", "updates", "x", vec![5]).unwrap();
            s.write("", "", "manager", vec![6]).unwrap();
            assert_eq!(s.read("monitors", "", "abc_0").unwrap(), vec![4]);
            assert_eq!(s.list("monitors", "").unwrap(), vec!["abc_0".to_string()]);
            assert_eq!(
                s.read("monitors", "", "nope").unwrap_err().kind(),
                io::ErrorKind::NotFound
            );
            assert_eq!(
                s.write("", "x", "k", vec![]).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
            assert_eq!(
                s.write("a", "", "bad key!", vec![]).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
            s.remove("monitors", "updates", "x", false).unwrap();
            assert!(s.list("monitors", "updates").unwrap().is_empty());
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.read("", "", "manager").unwrap(), vec![6]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_transaction_commits_all_or_nothing() {
        let dir = std::env::temp_dir().join(format!("lnpd-kv-tx-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = SqliteStore::open(&dir.join("node.sqlite")).unwrap();
        s.write("a", "", "gone", vec![9]).unwrap();
        s.in_transaction(|tx| {
            SqliteStore::put_in(tx, "a", "", "x", Some(&[1]))?;
            SqliteStore::put_in(tx, "a", "", "gone", None)
        })
        .unwrap();
        assert_eq!(s.read("a", "", "x").unwrap(), vec![1]);
        assert!(s.read("a", "", "gone").is_err());
        // A failing step (a bad key) rolls back the writes before it.
        let r = s.in_transaction(|tx| {
            SqliteStore::put_in(tx, "a", "", "y", Some(&[2]))?;
            SqliteStore::put_in(tx, "a", "", "bad key!", Some(&[3]))
        });
        assert!(r.is_err());
        assert!(s.read("a", "", "y").is_err());
        assert_eq!(s.read("a", "", "x").unwrap(), vec![1]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn riders_are_written_with_the_next_write_and_not_before() {
        let dir = std::env::temp_dir().join(format!("lnpd-kv-ride-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.sqlite");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.write("q", "", "old", vec![0]).unwrap();
            s.ride_along("q", "", "a", Some(vec![1]));
            s.ride_along("q", "", "old", None);
            assert!(s.read("q", "", "a").is_err(), "not before the next write");
            // A write that fails keeps them for the next one.
            assert!(s.write("m", "", "bad key!", vec![2]).is_err());
            assert!(s.read("q", "", "a").is_err());
            // The latest for a key wins.
            s.ride_along("q", "", "a", Some(vec![3]));
            s.write("m", "", "monitor", vec![4]).unwrap();
            assert_eq!(s.read("q", "", "a").unwrap(), vec![3]);
            assert!(s.read("q", "", "old").is_err());
            // A removal carries them too, once.
            s.ride_along("q", "", "b", Some(vec![5]));
            s.remove("m", "", "monitor", false).unwrap();
            assert_eq!(s.read("q", "", "b").unwrap(), vec![5]);
            s.write("q", "", "b", vec![6]).unwrap();
            assert_eq!(s.read("q", "", "b").unwrap(), vec![6]);
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.read("q", "", "a").unwrap(), vec![3]);
        assert_eq!(s.list("q", "").unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
