//! coflow: a peer-to-peer collaboration node for shared customer flows.
//!
//! A **flow** is one shared process that starts with a customer's need and ends when the customer
//! confirms it fulfilled. Every participant holds the flow as an Automerge document; every change
//! is signed by its author's node key and accepted only if the author's role, in the change's
//! causal past, permits it. There is no server and no authority.
//!
//! # Layout
//!
//! - [`identity`]: the node key (ed25519), `NodeId` (= libp2p `PeerId`; `Copy`, converted to and
//!   from a `PeerId` through the key's bytes), change signing, the key file.
//! - [`flow`]: the flow document: `schema.rs` names every field and describes each object's
//!   shape (the contract other implementations share; `flow::field` is its root), typed reads
//!   (`Reader`, at any heads), edits (`Edit`), what a change did, read from its operations
//!   (`History`), what a flow waits on a member for (`waits.rs`), and `FlowId` (`id.rs`: a
//!   flow's 16-byte id, `Copy`, printed, serialized and stored as 32 lowercase hex characters,
//!   the 16 bytes on the wire).
//! - [`auth`]: signed changes and the accept path: batch signature verification, dependency
//!   ordering, batch apply, [`auth::policy`], the role policy evaluated in each change's
//!   causal past (with a memo of authors' roles along chains of their changes; `policy/place.rs`
//!   finds where an operation lands, `rules.rs` holds the rules, `members.rs` the admissions), and
//!   [`auth::removal`], the removal rule: which valid changes fall because their author was
//!   removed concurrently, settled by seniority, and the heads of what stands.
//! - [`store`]: the `Storage` trait the repository and the engine are generic over, and the
//!   SQLite store that implements it (WAL, `synchronous=FULL`): flows (held or offered), signed
//!   changes, snapshots, the removals among each flow's changes, declined flows; group
//!   transactions whose writes share one commit. Files: `store/mod.rs` (the traits, opening,
//!   transactions), `schema.rs` (migrations), `flows.rs`, `changes.rs`, `peers.rs` (address
//!   book, meta): each a table trait and its SQLite implementation; `mem/` (with `testkit`
//!   only): `MemStore`, the same rules in plain collections with an undo log, for simulations
//!   and tests (`mem/mod.rs`: the store, its undo log, transactions; `tables.rs`: its tables).
//! - [`repo`]: identity + store (`Repo<S: Storage = Store>`) + accept path: local edits and received changes go through the
//!   same verify → authorize → apply → persist path; each process writes under its own
//!   incarnation actor; flows are read as they stand (without fallen changes); show, log,
//!   verify. Files: `repo/mod.rs` (the repository, its caches, local edits, the time its engine
//!   gives it), `open.rs` (SQLite: data dir and store binding), `accept.rs` (received changes,
//!   every Automerge call on them guarded), `standing.rs` (the removal rule's
//!   state), `summary.rs` (each held flow's heads and members, stored, so the engine reads no
//!   document for them), `invite.rs`, `views.rs` (show, log, verify), `consent.rs` (a flow a
//!   member added this node to waits as an offer until its user accepts or declines it).
//! - [`clock`]: the wall clock (seconds and milliseconds since the epoch), in one place.
//! - [`export`]: process diagrams of a flow (Graphviz dot, Mermaid).
//! - [`wire`]: protobuf messages from `proto/coflow.proto`, the length-prefixed request-response
//!   codec, tickets.
//! - [`sync`]: the sans-IO sync engine (inputs in, [`sync::Io`] out; the time is an input,
//!   `Engine::set_now`, and when it next has work an output, `Engine::next_wake`; it reads no
//!   clock or environment and spawns no thread of its own): Automerge sync with signed
//!   changes per (peer, flow) (changes a peer lacks read from the store), pushes to every member
//!   of small connected flows, head announcements and their verdicts, fetching announced heads,
//!   which members to stay connected to, anti-entropy (the flows due, and a bounded share of
//!   the rest in turn: a tick costs what changed), joins, counters, the commit of a turn;
//!   a removed member is answered with the flow up to its removal, a stranger's message about a
//!   held flow as one about an unknown flow, and only what proves malice is penalized. One file
//!   per part, each an `impl Engine` block: `sync/{outbox, conversation, absorb, message, push,
//!   gossip, pull, links, anti_entropy, join, stats}.rs` around the façade in `sync/mod.rs`
//!   (`Engine<S: Storage = Store>`, generic over the repository's store);
//!   `sync/tests/` tests single parts with virtual time and a `MemStore` (`in_sync.rs`: the
//!   sync state `flow show` reports).
//! - [`net`]: the libp2p swarm: TCP + Noise + Yamux, QUIC, relay circuits, identify, ping,
//!   mDNS, Kademlia (coflow's own DHT), gossipsub (announcements), the two request-response
//!   protocols, block list, connection limits, AutoNAT v2 and v1, relay server and client,
//!   DCUtR, UPnP.
//! - [`config`]: `config.toml` in the data dir.
//! - `fuzz` (with `testkit` only): entry points for the fuzz targets and their regression tests.
//! - `sim` (with `testkit` only): the deterministic network simulator the tests and the
//!   benchmark share: real engines on in-memory stores, virtual time, latency, loss,
//!   duplication, partitions, gossip subscriptions and mesh (`sim/mod.rs`: the network and
//!   its clock; `deliver.rs`: engine output and arrivals; `scenario.rs`: runs both use, such
//!   as one flow with a thousand members).
//! - [`node`]: the runtime: one loop owning the engine and swarm, on a thread of its own (the
//!   servers and libp2p's connection tasks stay on the tokio workers), handling the inputs
//!   ready in a turn under one commit and sending what they produced after it. `node/mod.rs`:
//!   `run`, the turn loop (the engine's time in, sleeping until its next wake or the next
//!   second); `start.rs`: the data dir's lock, setup on a data dir with no key, the page, the
//!   drain; `turn.rs`: a turn's commit, held responses and the engine's `Io`;
//!   `swarm.rs`: listening (TCP and QUIC), connections, identify, mDNS, dialing; `rr.rs`: one routing
//!   for both request-response protocols (sync, join); `gossip.rs`: member topics (refreshed
//!   for the flows that changed, all of them every 10 s) and relayed ones (chosen every tick),
//!   announcements; `dht.rs`: Kademlia lookups and provider records (for the flows that
//!   changed, all of them every 10 s); `peers.rs`: the `PeerBook`
//!   of per-peer state (addresses, backoff, bans, penalized peers waiting to be blocked,
//!   budgets, lookups, open connections and whether each is relayed), each bounded;
//!   `reach.rs`: `Reach`, the state machine (no I/O) that says whether the node is reachable
//!   from outside and which relays to reserve on or give up; `nat.rs`: AutoNAT, relay, DCUtR
//!   and UPnP events into it and its actions out, the relay served following reachability,
//!   and join requests held until the DHT finds an inviter with no known address;
//!   `control.rs`: the control socket (axum over the Unix socket) and the calls the runtime
//!   answers itself; `faults.rs`: test fault injection. Started on a data dir with no key and
//!   its page served, the node first answers only the page's `init` (which makes the key).
//! - [`api`]: the control API: `Call`/`Reply`, the `Handle` trait with a local (store) and a
//!   remote transport (HTTP over the Unix socket, a hyper client).
//! - [`web`]: the page the node serves on loopback (`web/mod.rs`: binding, the Host, Origin,
//!   login and size checks, security headers, server-sent events of what changed; `login.rs`:
//!   single-use login codes (a browser is opened on a 0600 file that leads to one) and
//!   sessions of a cookie and a key, `web.sessions`; `http.rs`: the
//!   `POST /v1/call` handler and the connection-bounded listener (with an idle limit) the
//!   control socket shares; `assets.rs`: the page's files, compiled in). The page itself is
//!   `web/index.html`, `web/app.js` and `web/app.css` at the crate's root: plain JavaScript,
//!   no build step; it puts peer text into the page only as text.
//! - [`cluster`]: several nodes on one machine (as processes, and with `testkit` as tasks),
//!   driven through the control API: used by the demo, the examples and benchmarks.
//!   `cluster/nat.rs` (with `testkit` only): a world of Linux network namespaces with two homes
//!   behind iptables NAT routers and a public host, for the NAT tests and benchmark.
//! - [`demo`]: `coflow demo`, the tailor's story on three real nodes.
//! - [`cli`]: dispatch (`cli/mod.rs`), the clap commands and arguments with their help texts
//!   (`args.rs`), the API call each makes (`call.rs`), their human /
//!   `--json` output (`print.rs`), `coflow doctor` (`doctor.rs`), completions, manual pages and
//!   errors as JSON (`manual.rs`), `step show`, `decision show`, `flow invite list` and the
//!   check before fulfilling a flow with work open (`show.rs`).
//! - [`text`]: makes peer text safe to print (escapes, names with role and node id suffix, log
//!   sentences); the CLI, the demo and the repository's log summaries use it.
//! - [`error`]: the crate's error type.
//!
//! Only `cli`, `text` and `error` are public in the binary's build; every other module is
//! crate-private there, so the compiler reports dead code, and public with the `testkit`
//! feature, which the tests, examples, benchmark and fuzz targets turn on. Test fault injection
//! (`COFLOW_TEST_FAULTS`, `COFLOW_CRASH_AT`) is built only with `testkit`.

/// The library's modules: what the `coflow` binary needs is public; the rest is crate-private, so
/// the compiler reports dead code, and public only with the `testkit` feature, which the tests,
/// examples, benchmark and fuzz targets turn on (`[dev-dependencies]` in `Cargo.toml`).
macro_rules! internal {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {$(
        $(#[$attr])*
        #[cfg(feature = "testkit")]
        pub mod $name;
        $(#[$attr])*
        #[cfg(not(feature = "testkit"))]
        pub(crate) mod $name;
    )*};
}

pub mod cli;
pub mod error;
pub mod text;

#[cfg(feature = "testkit")]
pub mod fuzz;
#[cfg(feature = "testkit")]
pub mod sim;

internal!(
    api, auth, clock, cluster, config, demo, export, flow, identity, net, node, repo, store, sync,
    web, wire,
);

pub use error::{Error, Result};
