//! RFC 9162 §2.1 Merkle tree hashing: leaf and node hashes, the proofs a tree can give
//! (built from any source of complete subtree hashes), and their verification, which needs
//! nothing but SHA-256.

use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf hash, a node hash or a tree's root.
pub type Hash = [u8; 32];

/// What a proof check found wrong: the proof does not tie the leaf (or the older tree) to
/// the root it was checked against, or it is malformed for the sizes given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not below the tree size, or the older tree is larger than the newer.
    #[error("index or size out of range: {index} is not within a tree of size {size}")]
    OutOfRange {
        /// The leaf index, or the older tree's size.
        index: u64,
        /// The tree's size, or the newer tree's size.
        size: u64,
    },
    /// The proof has the wrong number of hashes for the sizes given.
    #[error("the proof has {found} hashes where {expected} are needed")]
    WrongLength {
        /// Hashes the sizes call for.
        expected: usize,
        /// Hashes in the proof.
        found: usize,
    },
    /// The hashes do not lead to the root (or roots) given.
    #[error("the proof does not lead to the given root")]
    RootMismatch,
}

/// The hash of a leaf: `SHA-256(0x00 ‖ leaf)`.
///
/// ```
/// // RFC 6962 / RFC 9162: the hash of the empty leaf.
/// let hash = varvedb::leaf_hash(b"");
/// assert_eq!(hash[..4], [0x6e, 0x34, 0x0b, 0x9c]);
/// ```
#[must_use]
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 ‖ left ‖ right)`.
#[must_use]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two below `n` (`n` ≥ 2): where RFC 9162 splits a tree of `n` leaves.
fn split(n: u64) -> u64 {
    1 << (n - 1).ilog2()
}

/// Where a proof's hashes come from: the hash of the complete subtree at `level` (a
/// subtree of `2^level` leaves) and `index` (its position among those of its level).
pub(crate) trait Nodes {
    type Error;
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// `MTH(D[start:end])` for a range the RFC's recursion reaches from a whole tree: its
/// left parts are complete subtrees aligned to their size.
pub(crate) fn subtree<N: Nodes>(nodes: &mut N, start: u64, end: u64) -> Result<Hash, N::Error> {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return nodes.node(n.trailing_zeros(), start >> n.trailing_zeros());
    }
    let k = split(n);
    let left = subtree(nodes, start, start + k)?;
    let right = subtree(nodes, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// `PATH(index, D[0:size])` (RFC 9162 §2.1.3.1), leaf side first. `index < size`.
pub(crate) fn inclusion_path<N: Nodes>(nodes: &mut N, index: u64, size: u64) -> Result<Vec<Hash>, N::Error> {
    let mut out = Vec::with_capacity(64);
    let (mut start, mut end) = (0, size);
    // Walked from the root down; the siblings are collected root first, then reversed.
    while end - start > 1 {
        let k = split(end - start);
        if index < start + k {
            out.push(subtree(nodes, start + k, end)?);
            end = start + k;
        } else {
            out.push(subtree(nodes, start, start + k)?);
            start += k;
        }
    }
    out.reverse();
    Ok(out)
}

/// `PROOF(old, D[0:new])` (RFC 9162 §2.1.4.1). `0 < old ≤ new`; empty when they are equal.
pub(crate) fn consistency_path<N: Nodes>(nodes: &mut N, old: u64, new: u64) -> Result<Vec<Hash>, N::Error> {
    let mut out = Vec::with_capacity(64);
    if old == new {
        return Ok(out);
    }
    // SUBPROOF(m, D[start:end], b), unrolled: each step appends one hash, and the
    // recursion's hashes come out innermost first, so they are gathered and reversed.
    let (mut m, mut start, mut end, mut whole) = (old, 0, new, true);
    loop {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(subtree(nodes, start, end)?);
            }
            break;
        }
        let k = split(n);
        if m <= k {
            out.push(subtree(nodes, start + k, end)?);
            end = start + k;
        } else {
            out.push(subtree(nodes, start, start + k)?);
            m -= k;
            start += k;
            whole = false;
        }
    }
    out.reverse();
    Ok(out)
}

/// Checks that `path` proves the leaf with hash `leaf` is leaf `index` of the tree of
/// `size` leaves with root `root` (RFC 9162 §2.1.3.2).
///
/// ```
/// use varvedb::{leaf_hash, node_hash, verify_inclusion};
/// let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
/// let root = node_hash(&a, &b);
/// assert!(verify_inclusion(&a, 0, 2, &[b], &root).is_ok());
/// assert!(verify_inclusion(&a, 1, 2, &[b], &root).is_err());
/// ```
///
/// # Errors
/// [`ProofError`] if the index is out of range, the path has the wrong length, or it does
/// not lead to `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange { index, size });
    }
    let expected = inclusion_len(index, size);
    if path.len() != expected {
        return Err(ProofError::WrongLength { expected, found: path.len() });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return Err(ProofError::RootMismatch);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s == 0 && r == *root { Ok(()) } else { Err(ProofError::RootMismatch) }
}

/// Checks that `path` proves the tree of `old_size` leaves with root `old_root` is a prefix
/// of the tree of `new_size` leaves with root `new_root` (RFC 9162 §2.1.4.2).
///
/// # Errors
/// [`ProofError`] if `old_size` is 0 or above `new_size`, the path has the wrong length, or
/// it does not lead to both roots.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    path: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), ProofError> {
    if old_size == 0 || old_size > new_size {
        return Err(ProofError::OutOfRange { index: old_size, size: new_size });
    }
    let expected = consistency_len(old_size, new_size);
    if path.len() != expected {
        return Err(ProofError::WrongLength { expected, found: path.len() });
    }
    if old_size == new_size {
        return if old_root == new_root { Ok(()) } else { Err(ProofError::RootMismatch) };
    }
    let mut hashes = path.iter();
    let first = if old_size.is_power_of_two() {
        *old_root
    } else {
        *hashes.next().ok_or(ProofError::RootMismatch)?
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (first, first);
    for c in hashes {
        if s == 0 {
            return Err(ProofError::RootMismatch);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s == 0 && fr == *old_root && sr == *new_root { Ok(()) } else { Err(ProofError::RootMismatch) }
}

/// The length of an inclusion path: one hash per level the leaf climbs.
fn inclusion_len(index: u64, size: u64) -> usize {
    let (mut start, mut end, mut n) = (0, size, 0);
    while end - start > 1 {
        let k = split(end - start);
        if index < start + k {
            end = start + k;
        } else {
            start += k;
        }
        n += 1;
    }
    n
}

/// The length of a consistency path, by the same recursion that builds one.
fn consistency_len(old: u64, new: u64) -> usize {
    if old == new {
        return 0;
    }
    let (mut m, mut start, mut end, mut whole, mut n) = (old, 0, new, true, 0);
    loop {
        let size = end - start;
        if m == size {
            return n + usize::from(!whole);
        }
        let k = split(size);
        if m <= k {
            end = start + k;
        } else {
            m -= k;
            start += k;
            whole = false;
        }
        n += 1;
    }
}

/// The running state of a tree being extended one leaf at a time: the roots of its
/// complete subtrees, largest first, each with its level. Gives the root of the tree so far
/// and tells which complete nodes each new leaf finishes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Frontier {
    size: u64,
    stack: Vec<(u32, Hash)>,
}

impl Frontier {
    /// A frontier for a tree of `size` leaves, from the roots of its complete subtrees,
    /// largest first (one per bit set in `size`).
    pub(crate) fn from_parts(size: u64, stack: Vec<(u32, Hash)>) -> Self {
        Frontier { size, stack }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Adds a leaf; `finished` is called with each complete node it finishes, the leaf
    /// first: `(level, index, hash)`.
    pub(crate) fn push(&mut self, leaf: Hash, mut finished: impl FnMut(u32, u64, &Hash)) {
        finished(0, self.size, &leaf);
        self.size += 1;
        self.stack.push((0, leaf));
        while let [.., (l1, left), (l2, right)] = self.stack[..] {
            if l1 != l2 {
                break;
            }
            let node = node_hash(&left, &right);
            self.stack.truncate(self.stack.len() - 2);
            let level = l1 + 1;
            finished(level, (self.size >> level) - 1, &node);
            self.stack.push((level, node));
        }
    }

    /// The root of the tree so far; the empty tree's is `SHA-256("")`.
    pub(crate) fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut r)) = it.next() else { return Sha256::digest([]).into() };
        for (_, left) in it {
            r = node_hash(left, &r);
        }
        r
    }
}

/// The root of the empty tree, `SHA-256("")` (RFC 9162 §2.1.1).
pub(crate) fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Hash {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
    }

    /// The leaves and roots of the RFC 6962 test vectors (certificate-transparency's
    /// merkle tree tests, also used by Go's sumdb/tlog).
    const LEAVES: [&str; 8] =
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// Leaf hashes held in memory, as a proof's source.
    struct Leaves(Vec<Hash>);

    impl Nodes for Leaves {
        type Error = std::convert::Infallible;
        fn node(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error> {
            let start = (index << level) as usize;
            Ok(reference_root(&self.0[start..start + (1 << level)]))
        }
    }

    /// MTH straight from the RFC's definition.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn leaves() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash(&unhex(l))).collect()
    }

    #[test]
    fn rfc6962_roots() {
        let leaves = leaves();
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
        for (i, leaf) in leaves.iter().enumerate() {
            frontier.push(*leaf, |_, _, _| {});
            assert_eq!(frontier.root(), hex(ROOTS[i]), "size {}", i + 1);
            assert_eq!(reference_root(&leaves[..=i]), hex(ROOTS[i]));
        }
    }

    #[test]
    fn rfc6962_inclusion_and_consistency_vectors() {
        let leaves = leaves();
        let proof = [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ]
        .map(hex);
        let mut nodes = Leaves(leaves.clone());
        assert_eq!(inclusion_path(&mut nodes, 5, 8).unwrap(), proof);
        verify_inclusion(&leaves[5], 5, 8, &proof, &hex(ROOTS[7])).unwrap();
        assert!(verify_inclusion(&leaves[5], 4, 8, &proof, &hex(ROOTS[7])).is_err());
        assert_eq!(inclusion_path(&mut nodes, 2, 3).unwrap(), [hex(ROOTS[1])]);
        verify_inclusion(&leaves[2], 2, 3, &[hex(ROOTS[1])], &hex(ROOTS[2])).unwrap();

        let proof = [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ]
        .map(hex);
        assert_eq!(consistency_path(&mut nodes, 6, 8).unwrap(), proof);
        verify_consistency(6, 8, &proof, &hex(ROOTS[5]), &hex(ROOTS[7])).unwrap();
        assert!(verify_consistency(6, 8, &proof, &hex(ROOTS[4]), &hex(ROOTS[7])).is_err());
        let proof = [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ]
        .map(hex);
        assert_eq!(consistency_path(&mut nodes, 2, 5).unwrap(), proof);
        verify_consistency(2, 5, &proof, &hex(ROOTS[1]), &hex(ROOTS[4])).unwrap();
    }

    #[test]
    fn every_consistency_pair_up_to_64_verifies_and_no_other_root_does() {
        let leaves: Vec<Hash> = (0u32..64).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        let mut nodes = Leaves(leaves.clone());
        for new in 1..=64u64 {
            let new_root = reference_root(&leaves[..new as usize]);
            for old in 1..=new {
                let old_root = reference_root(&leaves[..old as usize]);
                let path = consistency_path(&mut nodes, old, new).unwrap();
                verify_consistency(old, new, &path, &old_root, &new_root).unwrap();
                assert!(verify_consistency(old, new, &path, &new_root, &old_root).is_err() || old == new);
            }
        }
    }
}
