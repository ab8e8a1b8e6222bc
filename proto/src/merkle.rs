//! The Merkle tree of the placement history: RFC 9162 (Certificate Transparency v2, the tree of
//! RFC 6962), SHA-256 with domain-separated leaf (`0x00`) and interior (`0x01`) hashes.
//!
//! Shared by the scheduler, which appends every history event as a leaf and serves proofs, and
//! by `sovctl audit verify`, which checks them with no cluster reachable. Owns the hashing, the
//! compact running head ([`Frontier`]: the roots of the perfect subtrees of a tree, enough to
//! append and to compute the root), proof generation over stored subtree hashes
//! ([`NodeSource`]), and proof verification. Pure: no I/O, no clock.
//!
//! A *node* is the hash of a perfect subtree: `node(level, index)` covers leaves
//! `index * 2^level .. (index + 1) * 2^level`. Proofs of RFC 9162 only ever need such nodes
//! (every left part of the recursion is one), so a store that keeps each node as it completes
//! can answer any proof with O(log n) lookups.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of a tree of no leaves: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(leaf);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly smaller than `n` (`n` > 1): where RFC 9162 splits a tree.
fn split(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// The running head of a tree: the roots of its perfect subtrees, largest (leftmost) first, one
/// per set bit of its size. Appending is amortized O(1), the root O(log n); it is all the
/// replicated state needs to keep (the leaves live in the history store).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    pub size: u64,
    /// `(level, hash)`, levels strictly decreasing.
    pub nodes: Vec<(u32, Hash)>,
}

impl Frontier {
    /// Appends a leaf; returns every node this completes, `(level, index, hash)` from the leaf
    /// up, for a store that answers proofs.
    pub fn push(&mut self, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let index = self.size;
        self.size += 1;
        let mut completed = vec![(0, index, leaf)];
        let mut node = (0u32, leaf);
        let mut at = index;
        while let Some(&(level, left)) = self.nodes.last() {
            if level != node.0 {
                break;
            }
            self.nodes.pop();
            at /= 2;
            node = (level + 1, node_hash(&left, &node.1));
            completed.push((node.0, at, node.1));
        }
        self.nodes.push(node);
        completed
    }

    /// The tree's root (RFC 9162 `MTH`).
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(&(_, last)) = nodes.next() else {
            return empty_root();
        };
        nodes.fold(last, |acc, (_, left)| node_hash(left, &acc))
    }
}

/// Where proof generation finds the hashes of perfect subtrees.
pub trait NodeSource {
    /// `node(level, index)`; `None` when it is not stored (a corrupt or incomplete store).
    fn node(&self, level: u32, index: u64) -> Option<Hash>;
}

/// Why a proof could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf {index} is not in a tree of {size} leaves")]
    NoSuchLeaf { index: u64, size: u64 },
    #[error("tree size {first} is larger than {second}")]
    Backwards { first: u64, second: u64 },
    #[error("the history store lacks the hash of leaves {first}..{end}; it is incomplete")]
    Missing { first: u64, end: u64 },
}

/// `MTH(D[start .. start + len])`, from stored nodes.
fn subtree(src: &impl NodeSource, start: u64, len: u64) -> Result<Hash, ProofError> {
    if len == 0 {
        return Ok(empty_root());
    }
    if len.is_power_of_two() && start.is_multiple_of(len) {
        let level = len.trailing_zeros();
        return src.node(level, start >> level).ok_or(ProofError::Missing {
            first: start,
            end: start + len,
        });
    }
    let k = split(len);
    Ok(node_hash(
        &subtree(src, start, k)?,
        &subtree(src, start + k, len - k)?,
    ))
}

/// The root of the first `size` leaves (a tree that has since grown), from stored nodes.
pub fn root_at(src: &impl NodeSource, size: u64) -> Result<Hash, ProofError> {
    subtree(src, 0, size)
}

/// RFC 9162 inclusion proof (`PATH`) of leaf `index` in the tree of the first `size` leaves.
pub fn inclusion_proof(
    src: &impl NodeSource,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::NoSuchLeaf { index, size });
    }
    let mut proof = Vec::new();
    path(src, index, 0, size, &mut proof)?;
    Ok(proof)
}

fn path(
    src: &impl NodeSource,
    index: u64,
    start: u64,
    len: u64,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    if len <= 1 {
        return Ok(());
    }
    let k = split(len);
    if index < k {
        path(src, index, start, k, out)?;
        out.push(subtree(src, start + k, len - k)?);
    } else {
        path(src, index - k, start + k, len - k, out)?;
        out.push(subtree(src, start, k)?);
    }
    Ok(())
}

/// RFC 9162 consistency proof (`PROOF`) between the trees of the first `first` and `second`
/// leaves.
pub fn consistency_proof(
    src: &impl NodeSource,
    first: u64,
    second: u64,
) -> Result<Vec<Hash>, ProofError> {
    if first > second {
        return Err(ProofError::Backwards { first, second });
    }
    let mut proof = Vec::new();
    if first > 0 && first < second {
        subproof(src, first, 0, second, true, &mut proof)?;
    }
    Ok(proof)
}

fn subproof(
    src: &impl NodeSource,
    m: u64,
    start: u64,
    len: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    if m == len {
        if !whole {
            out.push(subtree(src, start, len)?);
        }
        return Ok(());
    }
    let k = split(len);
    if m <= k {
        subproof(src, m, start, k, whole, out)?;
        out.push(subtree(src, start + k, len - k)?);
    } else {
        subproof(src, m - k, start + k, len - k, false, out)?;
        out.push(subtree(src, start, k)?);
    }
    Ok(())
}

/// The root an inclusion proof leads to (RFC 9162 2.1.3.2), or `None` when the proof cannot be
/// one for leaf `index` of a tree of `size` leaves (wrong length, index out of range).
pub fn root_from_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return None;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    (snode == 0).then_some(r)
}

/// Whether `proof` shows leaf `leaf` at `index` in the tree of `size` leaves with `root`.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    root_from_inclusion(index, size, leaf, proof).is_some_and(|r| r == *root)
}

/// Whether `proof` shows the tree of `second` leaves with `second_root` extends the tree of
/// `first` leaves with `first_root` (RFC 9162 2.1.4.2): append-only.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        // Every tree extends the empty one.
        return proof.is_empty();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == *first_root && sr == *second_root
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Every node of a tree, as a history store keeps them.
    #[derive(Default)]
    struct Store {
        frontier: Frontier,
        nodes: HashMap<(u32, u64), Hash>,
    }

    impl Store {
        fn of(leaves: &[&[u8]]) -> Store {
            let mut s = Store::default();
            for l in leaves {
                s.push(l);
            }
            s
        }

        fn push(&mut self, leaf: &[u8]) {
            for (level, index, hash) in self.frontier.push(leaf_hash(leaf)) {
                self.nodes.insert((level, index), hash);
            }
        }
    }

    impl NodeSource for Store {
        fn node(&self, level: u32, index: u64) -> Option<Hash> {
            self.nodes.get(&(level, index)).copied()
        }
    }

    fn h(hex_text: &str) -> Hash {
        hex::decode(hex_text).unwrap().try_into().unwrap()
    }

    /// RFC 6962's test leaves (certificate-transparency `merkle_tree_test`).
    fn ct_leaves() -> Vec<Vec<u8>> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|x| hex::decode(x).unwrap())
        .collect()
    }

    /// The published roots of the first 1..=8 of those leaves.
    const CT_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn ct_store() -> Store {
        let leaves = ct_leaves();
        Store::of(&leaves.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }

    #[test]
    fn roots_match_the_published_vectors() {
        assert_eq!(
            Frontier::default().root(),
            h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        let mut store = Store::default();
        for (n, leaf) in ct_leaves().iter().enumerate() {
            store.push(leaf);
            assert_eq!(store.frontier.root(), h(CT_ROOTS[n]), "size {}", n + 1);
        }
        for n in 1..=8u64 {
            assert_eq!(root_at(&store, n).unwrap(), h(CT_ROOTS[n as usize - 1]));
        }
    }

    #[test]
    fn proofs_match_the_published_vectors() {
        let store = ct_store();
        // (1-based leaf, tree size, path), as published.
        let inclusion: [(u64, u64, &[&str]); 4] = [
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                3,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                2,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        let leaves = ct_leaves();
        for (leaf, size, want) in inclusion {
            let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
            assert_eq!(inclusion_proof(&store, leaf - 1, size).unwrap(), want);
            let lh = leaf_hash(&leaves[leaf as usize - 1]);
            assert!(verify_inclusion(
                leaf - 1,
                size,
                &lh,
                &want,
                &h(CT_ROOTS[size as usize - 1])
            ));
        }
        let consistency: [(u64, u64, &[&str]); 4] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (first, second, want) in consistency {
            let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
            assert_eq!(consistency_proof(&store, first, second).unwrap(), want);
            assert!(verify_consistency(
                first,
                second,
                &h(CT_ROOTS[first as usize - 1]),
                &h(CT_ROOTS[second as usize - 1]),
                &want
            ));
        }
    }

    /// A tree of `n` leaves `[i, i*7 % 256]`.
    fn grown(n: u64) -> Store {
        let mut s = Store::default();
        for i in 0..n {
            s.push(&[i as u8, (i * 7) as u8, (i >> 8) as u8]);
        }
        s
    }

    #[test]
    fn every_inclusion_proof_verifies_and_no_corruption_does() {
        let store = grown(70);
        for size in 1..=70u64 {
            let root = root_at(&store, size).unwrap();
            for index in 0..size {
                let leaf = store.node(0, index).unwrap();
                let proof = inclusion_proof(&store, index, size).unwrap();
                assert!(verify_inclusion(index, size, &leaf, &proof, &root));
                // Wrong index, wrong size, wrong leaf, a flipped bit, a dropped or added hash.
                if index > 0 {
                    assert!(!verify_inclusion(index - 1, size, &leaf, &proof, &root));
                }
                assert!(!verify_inclusion(index + 1, size, &leaf, &proof, &root));
                assert!(!verify_inclusion(index, size * 2, &leaf, &proof, &root));
                assert!(!verify_inclusion(index, size, &empty_root(), &proof, &root));
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][0] ^= 8;
                    assert!(!verify_inclusion(index, size, &leaf, &bad, &root));
                }
                if !proof.is_empty() {
                    assert!(!verify_inclusion(index, size, &leaf, &proof[1..], &root));
                }
                let mut longer = proof.clone();
                longer.push(root);
                assert!(!verify_inclusion(index, size, &leaf, &longer, &root));
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_no_corruption_does() {
        let store = grown(40);
        let roots: Vec<Hash> = (0..=40).map(|n| root_at(&store, n).unwrap()).collect();
        for second in 0..=40u64 {
            for first in 0..=second {
                let proof = consistency_proof(&store, first, second).unwrap();
                let (r1, r2) = (roots[first as usize], roots[second as usize]);
                assert!(verify_consistency(first, second, &r1, &r2, &proof));
                if proof.is_empty() {
                    continue;
                }
                assert!(!verify_consistency(first, second, &r2, &r1, &proof) || r1 == r2);
                assert!(!verify_consistency(first, second, &r1, &r2, &proof[1..]));
                assert!(!verify_consistency(first + 1, second, &r1, &r2, &proof));
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][0] ^= 16;
                    assert!(!verify_consistency(first, second, &r1, &r2, &bad));
                }
            }
        }
        assert!(consistency_proof(&store, 5, 4).is_err());
    }

    #[test]
    fn an_incomplete_store_says_so() {
        let mut store = grown(8);
        store.nodes.remove(&(2, 1));
        assert_eq!(
            inclusion_proof(&store, 0, 8),
            Err(ProofError::Missing { first: 4, end: 8 })
        );
        assert!(inclusion_proof(&store, 8, 8).is_err());
    }
}
