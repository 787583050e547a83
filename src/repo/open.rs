//! Opening a data dir's repository: the key and the store must both exist and belong together;
//! creating one (`coflow init`), or an empty store next to a key (`init --new-store`).

use super::*;

impl Repo {
    /// Opens the repository in `home`: the key and the store must both exist, and the store
    /// must be this key's (see [`META_NODE_ID`]).
    pub fn open(home: &Path) -> Result<Repo> {
        let identity = Identity::load(home)?;
        let store = Store::open(home)?;
        Repo::bound(store, identity, home)
    }

    /// Creates a node's data dir (`coflow init`): an empty store, then the key file. Refuses a
    /// data dir that has a key, or a database but no key (restore the key instead).
    pub fn init(home: &Path, identity: Identity) -> Result<Repo> {
        if home.join(KEY_FILE).exists() {
            return Err(IdentityError::Exists(home.to_path_buf()).into());
        }
        crate::identity::create_data_dir(home).map_err(|source| Error::Io {
            path: home.to_path_buf(),
            source,
        })?;
        let store = Store::create(home).map_err(|e| match e {
            StoreError::Exists { path } => Error::Invalid(format!(
                "{} holds a coflow store but there is no key next to it: restore {KEY_FILE} \
                 from a backup (a new key would not be this node)",
                path.display()
            )),
            e => e.into(),
        })?;
        identity.save(home)?;
        Repo::bound(store, identity, home)
    }

    /// An empty store next to an existing key (`coflow init --new-store`), for a node whose
    /// database was lost and will not be restored. Refuses to replace a store.
    pub fn new_store(home: &Path) -> Result<Repo> {
        let identity = Identity::load(home)?;
        let store = Store::create(home)?;
        Repo::bound(store, identity, home)
    }

    /// The repository of `store` and `identity`, once the store is known to be this key's. A
    /// store from before the binding is bound now.
    pub(super) fn bound(store: Store, identity: Identity, home: &Path) -> Result<Repo> {
        let me = identity.node_id().as_str();
        match store.reader().meta(META_NODE_ID)? {
            Some(owner) if owner != me => {
                return Err(Error::Invalid(format!(
                    "the key in {} is node {me}, but the database in {} belongs to node {owner}: \
                     the key file was replaced or damaged; restore it from a backup",
                    home.join(KEY_FILE).display(),
                    home.display()
                )))
            }
            Some(_) => {}
            None => store.reader().set_meta(META_NODE_ID, me)?,
        }
        let mut repo = Repo::new(store, identity);
        repo.index_removals()?;
        Ok(repo)
    }

    /// Records the removals in every flow of a store made before removals were recorded
    /// (schema 2), once.
    pub(super) fn index_removals(&mut self) -> Result<()> {
        if self
            .store
            .reader()
            .meta(crate::store::META_REMOVALS_INDEXED)?
            .is_some()
        {
            return Ok(());
        }
        self.store.write(|w| {
            for flow in w.flow_ids()? {
                let doc = load_doc(w, &flow)?;
                let mut found = Vec::new();
                for node in removal::graph_of(&doc) {
                    let Some(change) = doc.get_change_by_hash(&node.hash) else {
                        continue;
                    };
                    if let Some(author) = crate::identity::actor_node(change.actor_id()) {
                        found.extend(removal::removals_in(&doc, &change, &author));
                    }
                }
                w.insert_removals(&flow, &found)?;
            }
            w.set_meta(crate::store::META_REMOVALS_INDEXED, "1")?;
            Ok::<_, Error>(())
        })
    }
}
