//! Evidence of the placement history that verifies offline: signed checkpoints, the export file
//! that `sovctl history export` writes, and its verification (`sovctl audit verify`).
//!
//! Owns the cluster key's text form, the exact bytes a checkpoint and a seal sign, the JSON
//! lines of an export, and the checks that find the first entry altered, removed, reordered or
//! inserted. Shared by the scheduler (which signs) and sovctl (which verifies, with no cluster
//! reachable). Pure: no I/O.
//!
//! An export, one JSON object a line:
//!
//! ```text
//! {"type":"header","format":"sov-evidence/1","cluster_id":…,"exported_at_ms":…,"filter":…}
//! {"type":"event","leaf":12,"event":"<the event's canonical JSON>","proof":["<hex>",…]}
//! …                                   one line per event, in leaf order, proofs for tree_size
//! {"type":"consistency","from_size":m,"from_root":"<hex>","proof":[…]}   (with --previous)
//! {"type":"seal","cluster_id":…,"tree_size":n,"root":"<hex>","at_ms":…,
//!  "checkpoint_signature":"<hex>","leaves":[[first,last],…],"filter":…,"signature":"<hex>"}
//! ```
//!
//! The checkpoint signature covers (cluster id, tree size, root, time): any two checkpoints of
//! one cluster are related by a consistency proof (append-only, invariant I4). The seal
//! signature covers the checkpoint and which leaves the file holds, so a removed, inserted or
//! truncated line is found even though the header is not signed.

use std::fmt::Write as _;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::merkle::{self, Hash};

/// The `format` of the header line of an export.
pub const FORMAT: &str = "sov-evidence/1";
const PUBLIC_PREFIX: &str = "sov-ed25519-public:";
const SECRET_PREFIX: &str = "sov-ed25519-secret:";

/// Why key text, a checkpoint or an export is not acceptable. Each says where and what next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("{0}")]
    Key(String),
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("{0}")]
    File(String),
}

fn key_err(message: impl Into<String>) -> EvidenceError {
    EvidenceError::Key(message.into())
}

fn line_err(line: usize, message: impl Into<String>) -> EvidenceError {
    EvidenceError::Line {
        line,
        message: message.into(),
    }
}

/// The key file text of a signing key (`sov-scheduler keygen` writes it; keep it secret).
pub fn secret_key_text(key: &SigningKey) -> String {
    format!(
        "# sov cluster signing key (Ed25519). Secret: readable by the scheduler only.\n{SECRET_PREFIX}{}\n",
        hex::encode(key.to_bytes())
    )
}

/// The key file text of a public key (give it to reviewers: `audit verify --key`).
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!(
        "# sov cluster public key (Ed25519): verifies checkpoints and exports.\n{PUBLIC_PREFIX}{}\n",
        hex::encode(key.to_bytes())
    )
}

/// The one non-comment line of a key file, after its prefix, as 32 bytes.
fn key_bytes(text: &str, prefix: &str, what: &str) -> Result<[u8; 32], EvidenceError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| key_err(format!("the {what} file is empty")))?;
    let hex_text = line.strip_prefix(prefix).ok_or_else(|| {
        key_err(format!(
            "not a sov {what} file: its key line must start with {prefix:?}"
        ))
    })?;
    hex::decode(hex_text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| key_err(format!("the {what} is not 64 hex digits")))
}

pub fn parse_secret_key(text: &str) -> Result<SigningKey, EvidenceError> {
    Ok(SigningKey::from_bytes(&key_bytes(
        text,
        SECRET_PREFIX,
        "signing key",
    )?))
}

pub fn parse_public_key(text: &str) -> Result<VerifyingKey, EvidenceError> {
    VerifyingKey::from_bytes(&key_bytes(text, PUBLIC_PREFIX, "public key")?)
        .map_err(|_| key_err("the public key is not a valid Ed25519 point"))
}

/// First 8 bytes, hex, of the SHA-256 of a public key: names the key in checkpoints.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.to_bytes())[..8])
}

/// What a checkpoint states: the history of `cluster_id` had `tree_size` events with `root` at
/// leader time `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub cluster_id: String,
    pub tree_size: u64,
    #[serde(with = "hex_hash")]
    pub root: Hash,
    pub at_ms: i64,
}

impl Checkpoint {
    /// The exact bytes signed: a fixed text form, so any language can rebuild them.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "sov-checkpoint/1\ncluster {}\nsize {}\nroot {}\nat_ms {}\n",
            self.cluster_id,
            self.tree_size,
            hex::encode(self.root),
            self.at_ms
        )
        .into_bytes()
    }

    pub fn sign(&self, key: &SigningKey) -> [u8; 64] {
        key.sign(&self.message()).to_bytes()
    }

    pub fn verify(&self, key: &VerifyingKey, signature: &[u8]) -> bool {
        Signature::from_slice(signature).is_ok_and(|s| key.verify(&self.message(), &s).is_ok())
    }
}

/// The last line of an export: the checkpoint, which leaves the file holds (inclusive ranges),
/// and the filter, signed together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
    #[serde(with = "hex_bytes")]
    pub checkpoint_signature: Vec<u8>,
    pub leaves: Vec<(u64, u64)>,
    pub filter: String,
    #[serde(with = "hex_bytes", default)]
    pub signature: Vec<u8>,
}

impl Seal {
    fn message(&self) -> Vec<u8> {
        let mut text = String::from("sov-export/1\n");
        text.push_str(&String::from_utf8_lossy(&self.checkpoint.message()));
        let _ = writeln!(text, "filter {}", self.filter);
        for (first, last) in &self.leaves {
            let _ = writeln!(text, "leaves {first} {last}");
        }
        text.into_bytes()
    }

    /// Signs the checkpoint and the seal.
    pub fn sign(&mut self, key: &SigningKey) {
        self.checkpoint_signature = self.checkpoint.sign(key).to_vec();
        self.signature = key.sign(&self.message()).to_bytes().to_vec();
    }

    pub fn verify(&self, key: &VerifyingKey) -> bool {
        self.checkpoint.verify(key, &self.checkpoint_signature)
            && Signature::from_slice(&self.signature)
                .is_ok_and(|s| key.verify(&self.message(), &s).is_ok())
    }
}

/// Sorted leaf indexes as inclusive ranges: `[1,2,3,7]` is `[(1,3),(7,7)]`.
pub fn ranges(leaves: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for leaf in leaves {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == leaf => *last = leaf,
            _ => out.push((leaf, leaf)),
        }
    }
    out
}

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    Header {
        format: String,
        cluster_id: String,
        exported_at_ms: i64,
        filter: String,
    },
    Event {
        leaf: u64,
        /// The event's canonical JSON: the bytes its leaf hash covers.
        event: String,
        #[serde(with = "hex_hashes")]
        proof: Vec<Hash>,
    },
    Consistency {
        from_size: u64,
        #[serde(with = "hex_hash")]
        from_root: Hash,
        #[serde(with = "hex_hashes")]
        proof: Vec<Hash>,
    },
    Seal(Seal),
}

impl Line {
    /// The line as written, without its newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("evidence lines serialize")
    }
}

/// What a verified export proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub checkpoint: Checkpoint,
    pub events: u64,
    pub leaves: Vec<(u64, u64)>,
    pub filter: String,
    /// The earlier export this one was shown to extend: its tree size.
    pub extends: Option<u64>,
}

/// Verifies an export with the cluster's public key, offline; with `previous` (an earlier
/// export of the same cluster, verified first), also that this one's history extends it.
/// The error names the first line or leaf that is wrong and how.
pub fn verify(
    text: &str,
    key: &VerifyingKey,
    previous: Option<&str>,
) -> Result<Verified, EvidenceError> {
    let earlier = match previous {
        None => None,
        Some(p) => Some(verify(p, key, None).map_err(|e| {
            EvidenceError::File(format!("the previous export does not verify: {e}"))
        })?),
    };
    let mut lines: Vec<(usize, Line)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(raw).map_err(|e| {
            line_err(
                n,
                format!("not an evidence line ({e}): the file was altered"),
            )
        })?;
        lines.push((n, line));
    }
    let last_line = lines.last().map_or(0, |(n, _)| *n);
    match lines.first() {
        Some((_, Line::Header { format, .. })) if format == FORMAT => {}
        Some((n, Line::Header { format, .. })) => {
            return Err(line_err(
                *n,
                format!("format {format:?}; this sovctl reads {FORMAT:?}"),
            ));
        }
        _ => {
            return Err(EvidenceError::File(
                "no header line: not a sov evidence file (sovctl history export writes one)".into(),
            ));
        }
    }
    let Some((seal_line, Line::Seal(seal))) = lines.last() else {
        return Err(EvidenceError::File(format!(
            "no seal: the file ends at line {last_line} without its signed last line; it was truncated"
        )));
    };
    if !seal.verify(key) {
        return Err(line_err(
            *seal_line,
            format!(
                "the seal's signature does not verify with key {}: the checkpoint or the list of exported events was altered, or another key signed it",
                key_id(key)
            ),
        ));
    }
    let cp = &seal.checkpoint;
    // Expected leaves, in order, from the signed ranges.
    let mut expected = seal
        .leaves
        .iter()
        .flat_map(|&(first, last)| first..=last)
        .peekable();
    // Every leaf the file holds, to tell an event moved later from one removed.
    let present: std::collections::HashSet<u64> = lines
        .iter()
        .filter_map(|(_, l)| match l {
            Line::Event { leaf, .. } => Some(*leaf),
            _ => None,
        })
        .collect();
    let mut events = 0u64;
    let mut last_leaf: Option<(u64, usize)> = None;
    let mut consistency: Option<(usize, u64, Hash, Vec<Hash>)> = None;
    for (n, line) in &lines[1..lines.len() - 1] {
        match line {
            Line::Header { .. } => {
                return Err(line_err(*n, "a second header: lines were inserted"));
            }
            Line::Seal(_) => {
                return Err(line_err(*n, "a seal before the end: lines were inserted"));
            }
            Line::Consistency {
                from_size,
                from_root,
                proof,
            } => consistency = Some((*n, *from_size, *from_root, proof.clone())),
            Line::Event { leaf, event, proof } => {
                if let Some((prev, _)) = last_leaf
                    && *leaf <= prev
                {
                    return Err(line_err(
                        *n,
                        format!(
                            "leaf {leaf} comes after leaf {prev}: events were reordered or repeated"
                        ),
                    ));
                }
                let listed = seal
                    .leaves
                    .iter()
                    .any(|&(first, last)| (first..=last).contains(leaf));
                if !listed {
                    return Err(line_err(
                        *n,
                        format!(
                            "leaf {leaf} is not among the events the seal lists: it was inserted"
                        ),
                    ));
                }
                match expected.peek() {
                    Some(&want) if want == *leaf => {
                        expected.next();
                    }
                    Some(&want) if want < *leaf && present.contains(&want) => {
                        return Err(line_err(
                            *n,
                            format!(
                                "leaf {leaf} comes before leaf {want}, which is further down: events were reordered"
                            ),
                        ));
                    }
                    Some(&want) if want < *leaf => {
                        return Err(line_err(
                            *n,
                            format!(
                                "leaf {want} is missing before this line (leaf {leaf}): an event was removed"
                            ),
                        ));
                    }
                    _ => {
                        return Err(line_err(
                            *n,
                            format!(
                                "leaf {leaf} is not among the events the seal lists: it was inserted"
                            ),
                        ));
                    }
                }
                let lh = merkle::leaf_hash(event.as_bytes());
                if !merkle::verify_inclusion(*leaf, cp.tree_size, &lh, proof, &cp.root) {
                    return Err(line_err(
                        *n,
                        format!(
                            "leaf {leaf} does not match the signed history (tree size {}): the event or its proof was altered",
                            cp.tree_size
                        ),
                    ));
                }
                last_leaf = Some((*leaf, *n));
                events += 1;
            }
        }
    }
    if let Some(missing) = expected.next() {
        let after = last_leaf.map_or("the header".to_string(), |(_, n)| format!("line {n}"));
        return Err(EvidenceError::File(format!(
            "leaf {missing} and any after it that the seal lists are missing after {after}: events were removed or the file was truncated"
        )));
    }
    let extends = match earlier {
        None => None,
        Some(old) => {
            let Some((n, from_size, from_root, proof)) = consistency else {
                return Err(EvidenceError::File(format!(
                    "no consistency proof from tree size {} in this export: export again with --previous",
                    old.checkpoint.tree_size
                )));
            };
            if old.checkpoint.cluster_id != cp.cluster_id {
                return Err(EvidenceError::File(format!(
                    "the previous export is of cluster {}, this one of {}",
                    old.checkpoint.cluster_id, cp.cluster_id
                )));
            }
            if from_size != old.checkpoint.tree_size || from_root != old.checkpoint.root {
                return Err(line_err(
                    n,
                    format!(
                        "the consistency proof starts from another history (size {from_size}, root {}) than the previous export's (size {}, root {}): one of them was rewritten",
                        hex::encode(from_root),
                        old.checkpoint.tree_size,
                        hex::encode(old.checkpoint.root)
                    ),
                ));
            }
            if !merkle::verify_consistency(from_size, cp.tree_size, &from_root, &cp.root, &proof) {
                return Err(line_err(
                    n,
                    format!(
                        "the history of size {} does not extend the previous one of size {from_size}: it was rewritten (invariant I4)",
                        cp.tree_size
                    ),
                ));
            }
            Some(from_size)
        }
    };
    Ok(Verified {
        checkpoint: cp.clone(),
        events,
        leaves: seal.leaves.clone(),
        filter: seal.filter.clone(),
        extends,
    })
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(&text)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a 64-hex-digit hash")))
    }
}

mod hex_hashes {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(hs: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(hs.len()))?;
        for h in hs {
            seq.serialize_element(&hex::encode(h))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|text| {
                hex::decode(&text)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        serde::de::Error::custom(format!("{text:?} is not a 64-hex-digit hash"))
                    })
            })
            .collect()
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(&text).map_err(|_| serde::de::Error::custom(format!("{text:?} is not hex")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{Frontier, NodeSource, inclusion_proof};
    use std::collections::HashMap;

    struct Log {
        frontier: Frontier,
        nodes: HashMap<(u32, u64), Hash>,
        events: Vec<String>,
    }

    impl NodeSource for Log {
        fn node(&self, level: u32, index: u64) -> Option<Hash> {
            self.nodes.get(&(level, index)).copied()
        }
    }

    fn log(n: u64) -> Log {
        let mut l = Log {
            frontier: Frontier::default(),
            nodes: HashMap::new(),
            events: Vec::new(),
        };
        for i in 0..n {
            let e = format!("{{\"seq\":{i},\"kind\":\"allocation.placed\"}}");
            for (level, index, h) in l.frontier.push(merkle::leaf_hash(e.as_bytes())) {
                l.nodes.insert((level, index), h);
            }
            l.events.push(e);
        }
        l
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    /// An export of `leaves` of `l`, as the scheduler writes it.
    fn export(l: &Log, leaves: &[u64], previous: Option<u64>) -> String {
        let size = l.frontier.size;
        let mut out = vec![
            Line::Header {
                format: FORMAT.into(),
                cluster_id: "c1".into(),
                exported_at_ms: 5,
                filter: "all".into(),
            }
            .to_json(),
        ];
        for &leaf in leaves {
            out.push(
                Line::Event {
                    leaf,
                    event: l.events[leaf as usize].clone(),
                    proof: inclusion_proof(l, leaf, size).unwrap(),
                }
                .to_json(),
            );
        }
        if let Some(from) = previous {
            out.push(
                Line::Consistency {
                    from_size: from,
                    from_root: merkle::root_at(l, from).unwrap(),
                    proof: merkle::consistency_proof(l, from, size).unwrap(),
                }
                .to_json(),
            );
        }
        let mut seal = Seal {
            checkpoint: Checkpoint {
                cluster_id: "c1".into(),
                tree_size: size,
                root: l.frontier.root(),
                at_ms: 9,
            },
            checkpoint_signature: Vec::new(),
            leaves: ranges(leaves.iter().copied()),
            filter: "all".into(),
            signature: Vec::new(),
        };
        seal.sign(&key());
        out.push(Line::Seal(seal).to_json());
        out.join("\n") + "\n"
    }

    fn err(text: &str) -> String {
        verify(text, &key().verifying_key(), None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn keys_round_trip_through_their_text_and_refuse_the_other_kind() {
        let k = key();
        assert_eq!(
            parse_secret_key(&secret_key_text(&k)).unwrap().to_bytes(),
            k.to_bytes()
        );
        let p = k.verifying_key();
        assert_eq!(parse_public_key(&public_key_text(&p)).unwrap(), p);
        assert!(parse_public_key(&secret_key_text(&k)).is_err());
        assert!(parse_secret_key("sov-ed25519-secret:abc").is_err());
        assert_eq!(key_id(&p).len(), 16);
    }

    #[test]
    fn an_untampered_export_verifies() {
        let l = log(20);
        let leaves: Vec<u64> = (3..15).collect();
        let v = verify(&export(&l, &leaves, None), &key().verifying_key(), None).unwrap();
        assert_eq!((v.events, v.leaves.clone()), (12, vec![(3, 14)]));
        assert_eq!(v.checkpoint.tree_size, 20);
        // A filtered (non-contiguous) export too.
        let v = verify(&export(&l, &[1, 2, 9], None), &key().verifying_key(), None).unwrap();
        assert_eq!(v.leaves, vec![(1, 2), (9, 9)]);
    }

    #[test]
    fn tampering_is_found_and_named() {
        let l = log(20);
        let leaves: Vec<u64> = (3..15).collect();
        let good = export(&l, &leaves, None);
        let lines: Vec<&str> = good.lines().collect();
        let join = |ls: &[&str]| ls.join("\n");

        // A byte flipped inside an event (line 4 is leaf 5).
        let flipped = good.replacen("\"seq\\\":5", "\"seq\\\":6", 1);
        assert_ne!(flipped, good);
        assert!(
            err(&flipped).starts_with("line 4: leaf 5 does not match"),
            "{}",
            err(&flipped)
        );
        // An event dropped (line 6, leaf 7).
        let mut dropped = lines.clone();
        dropped.remove(5);
        assert!(
            err(&join(&dropped)).starts_with("line 6: leaf 7 is missing before this line"),
            "{}",
            err(&join(&dropped))
        );
        // Two events swapped.
        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        assert!(
            err(&join(&swapped)).starts_with("line 4: leaf 6 comes before leaf 5")
                && err(&join(&swapped)).ends_with("events were reordered"),
            "{}",
            err(&join(&swapped))
        );
        // The tail cut off (seal included), then the tail cut before the seal.
        assert!(err(&join(&lines[..8])).starts_with("no seal"));
        let mut short = lines[..8].to_vec();
        short.push(lines[lines.len() - 1]);
        assert!(
            err(&join(&short)).contains("leaf 10 and any after it"),
            "{}",
            err(&join(&short))
        );
        // An event inserted from outside the listed leaves.
        let foreign = export(&l, &[17], None);
        let mut inserted = lines.clone();
        inserted.insert(5, foreign.lines().nth(1).unwrap());
        assert!(
            err(&join(&inserted)).contains("inserted")
                || err(&join(&inserted)).contains("reordered"),
            "{}",
            err(&join(&inserted))
        );
        // A forged checkpoint: another root, or signed with another key.
        let forged = good.replace(&hex::encode(l.frontier.root()), &hex::encode([1u8; 32]));
        assert!(
            err(&forged).contains("signature does not verify"),
            "{}",
            err(&forged)
        );
        let other = verify(
            &good,
            &SigningKey::from_bytes(&[8u8; 32]).verifying_key(),
            None,
        );
        assert!(
            other
                .unwrap_err()
                .to_string()
                .contains("signature does not verify")
        );
    }

    #[test]
    fn a_later_export_verifies_as_an_extension_of_an_earlier_one() {
        let early = log(9);
        let late = log(30);
        let old = export(&early, &[0, 1, 2], None);
        let new = export(&late, &[20, 21], Some(9));
        let v = verify(&new, &key().verifying_key(), Some(&old)).unwrap();
        assert_eq!(v.extends, Some(9));
        // Without the proof, or against a rewritten history, it does not.
        let bare = export(&late, &[20, 21], None);
        assert!(
            verify(&bare, &key().verifying_key(), Some(&old))
                .unwrap_err()
                .to_string()
                .contains("no consistency proof")
        );
        let mut rewritten = log(30);
        rewritten.events[3] = "changed".into();
        let mut frontier = Frontier::default();
        rewritten.nodes.clear();
        for e in &rewritten.events {
            for (level, index, h) in frontier.push(merkle::leaf_hash(e.as_bytes())) {
                rewritten.nodes.insert((level, index), h);
            }
        }
        rewritten.frontier = frontier;
        let forged = export(&rewritten, &[20, 21], Some(9));
        assert!(
            verify(&forged, &key().verifying_key(), Some(&old))
                .unwrap_err()
                .to_string()
                .contains("another history")
        );
    }
}
