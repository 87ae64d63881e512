//! The RFC 6962 / RFC 9162 §2.1 Merkle tree: roots and proofs read from stored nodes, and the
//! append-only [`Frontier`] that produces those nodes.
//!
//! Storage keeps only hashes of *perfect* subtrees: level `L`, index `i` covers leaves
//! `[i << L, (i + 1) << L)`. Every other hash (the root of a size that is not a power of two,
//! the right-hand siblings in proofs) is folded from at most 64 perfect nodes, so reading a
//! root or a proof costs O(log n) node reads and never needs a node that could later change.

use crate::{empty_root, node_hash, Hash};

/// Reads hashes of perfect subtrees: level `L`, index `i` covers leaves `[i << L, (i + 1) << L)`.
/// Level 0 holds the leaf hashes.
pub trait NodeSource {
    type Error: std::error::Error + Send + Sync + 'static;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

impl<T: NodeSource + ?Sized> NodeSource for &T {
    type Error = T::Error;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        (**self).node(level, index)
    }
}

/// A perfect node completed by [`Frontier::append`]: `(level, index, hash)`.
pub type CompletedNode = (u8, u64, Hash);

/// Why a root or a proof could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum TreeError<E> {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("a consistency proof needs old size ({old_size}) <= new size ({new_size})")]
    InvalidSizes { old_size: u64, new_size: u64 },
    #[error("could not read tree node at level {level}, index {index}")]
    Source {
        level: u8,
        index: u64,
        #[source]
        source: E,
    },
}

/// Root hash of the first `size` leaves (the empty root for 0).
pub fn root<S: NodeSource>(size: u64, src: &S) -> Result<Hash, TreeError<S::Error>> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(0, size, src)
}

/// Inclusion proof (RFC 6962 §2.1.1 `PATH`) of leaf `index` in the tree of `size` leaves,
/// from the leaf's sibling up to the root's child.
pub fn inclusion_proof<S: NodeSource>(
    index: u64,
    size: u64,
    src: &S,
) -> Result<Vec<Hash>, TreeError<S::Error>> {
    if index >= size {
        return Err(TreeError::IndexOutOfRange { index, size });
    }
    let mut siblings = Vec::with_capacity(64);
    let (mut begin, mut end) = (0, size);
    while end - begin > 1 {
        let split = begin + largest_power_of_two_below(end - begin);
        if index < split {
            siblings.push(range_hash(split, end, src)?);
            end = split;
        } else {
            siblings.push(range_hash(begin, split, src)?);
            begin = split;
        }
    }
    siblings.reverse();
    Ok(siblings)
}

/// Consistency proof (RFC 6962 §2.1.2 `PROOF`) that the tree of `old_size` leaves is a prefix
/// of the tree of `new_size` leaves. Empty when the sizes are equal, and from the empty tree
/// (every tree extends it; the verifier checks that the old root is the empty root).
pub fn consistency_proof<S: NodeSource>(
    old_size: u64,
    new_size: u64,
    src: &S,
) -> Result<Vec<Hash>, TreeError<S::Error>> {
    if old_size > new_size {
        return Err(TreeError::InvalidSizes { old_size, new_size });
    }
    if old_size == 0 {
        return Ok(Vec::new());
    }
    let mut proof = Vec::with_capacity(64);
    let (mut begin, mut end) = (0, new_size);
    // `SUBPROOF`'s flag b: true while the old tree is a left edge of the new one.
    let mut old_tree_is_left_edge = true;
    loop {
        if old_size == end {
            if !old_tree_is_left_edge {
                proof.push(range_hash(begin, end, src)?);
            }
            break;
        }
        let split = begin + largest_power_of_two_below(end - begin);
        if old_size <= split {
            proof.push(range_hash(split, end, src)?);
            end = split;
        } else {
            proof.push(range_hash(begin, split, src)?);
            begin = split;
            old_tree_is_left_edge = false;
        }
    }
    // Collected top-down (the old tree's own subtree hash last); the proof lists them bottom-up.
    proof.reverse();
    Ok(proof)
}

/// `k` of RFC 6962: the largest power of two strictly below `count` (which is at least 2).
fn largest_power_of_two_below(count: u64) -> u64 {
    1 << (63 - (count - 1).leading_zeros())
}

/// Hash of the subtree over leaves `[begin, end)`, folded from its perfect parts. The range is
/// an RFC 6962 subtree, so `begin` is aligned to every part's size.
fn range_hash<S: NodeSource>(begin: u64, end: u64, src: &S) -> Result<Hash, TreeError<S::Error>> {
    let mut parts = [[0u8; 32]; 64];
    let mut count = 0;
    let mut position = begin;
    let width = end - begin;
    for level in (0..64u8).rev() {
        if width >> level & 1 == 1 {
            let index = position >> level;
            parts[count] = read(src, level, index)?;
            count += 1;
            position += 1 << level;
        }
    }
    Ok(fold_right(&parts[..count]))
}

/// Folds perfect parts, largest (leftmost) first, into one hash: the last part is the deepest.
fn fold_right(parts: &[Hash]) -> Hash {
    let mut iter = parts.iter().rev();
    let Some(mut hash) = iter.next().copied() else {
        return empty_root();
    };
    for part in iter {
        hash = node_hash(part, &hash);
    }
    hash
}

fn read<S: NodeSource>(src: &S, level: u8, index: u64) -> Result<Hash, TreeError<S::Error>> {
    src.node(level, index).map_err(|source| TreeError::Source {
        level,
        index,
        source,
    })
}

/// Append-only tree builder (the "compact range" of `[0, size)`): one perfect-subtree hash per
/// set bit of `size`, so at most 64 hashes, whatever the size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `peaks[L]` is the perfect subtree of level `L` when bit `L` of `size` is set, else zero.
    peaks: [Hash; 64],
}

impl Default for Frontier {
    fn default() -> Self {
        Self::new()
    }
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Self {
            size: 0,
            peaks: [[0; 32]; 64],
        }
    }

    /// Number of leaves appended.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Rebuilds the frontier of the first `size` leaves from stored perfect nodes
    /// (one read per set bit of `size`).
    pub fn restore<S: NodeSource>(size: u64, src: &S) -> Result<Self, TreeError<S::Error>> {
        let mut frontier = Self::new();
        for level in 0..64u8 {
            if size >> level & 1 == 1 {
                let index = (size >> level) - 1;
                frontier.peaks[usize::from(level)] = read(src, level, index)?;
            }
        }
        frontier.size = size;
        Ok(frontier)
    }

    /// Appends a leaf hash and returns every perfect node it completes, the leaf itself first
    /// as level 0: `(level, index, hash)`. Allocates; see [`Frontier::append_into`].
    pub fn append(&mut self, leaf: Hash) -> Vec<CompletedNode> {
        let mut completed = Vec::new();
        self.append_into(leaf, &mut completed);
        completed
    }

    /// [`Frontier::append`] without allocation: pushes the completed nodes onto `completed`
    /// (which is not cleared, so one buffer can collect a whole batch).
    ///
    /// A tree holds at most `u64::MAX` leaves; appending to a full tree (584,000 years at a
    /// million leaves per second) leaves it unchanged and completes nothing.
    pub fn append_into(&mut self, leaf: Hash, completed: &mut Vec<CompletedNode>) {
        let Some(new_size) = self.size.checked_add(1) else {
            return;
        };
        let mut hash = leaf;
        let mut index = self.size;
        let mut level = 0u8;
        completed.push((level, index, hash));
        // Each set low bit of the old size is a finished sibling that now merges upwards. The
        // old size is below u64::MAX, so it has a clear bit and `level` stays below 64.
        while self.size >> level & 1 == 1 {
            let slot = &mut self.peaks[usize::from(level)];
            hash = node_hash(slot, &hash);
            *slot = [0; 32];
            level += 1;
            index >>= 1;
            completed.push((level, index, hash));
        }
        self.peaks[usize::from(level)] = hash;
        self.size = new_size;
    }

    /// Root hash of the leaves appended so far.
    pub fn root(&self) -> Hash {
        let mut parts = [[0u8; 32]; 64];
        let mut count = 0;
        for level in (0..64).rev() {
            if self.size >> level & 1 == 1 {
                parts[count] = self.peaks[level];
                count += 1;
            }
        }
        fold_right(&parts[..count])
    }
}

/// A node that a [`MemoryTree`] does not hold (the subtree is not complete yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the tree has no complete node at level {level}, index {index}")]
pub struct MissingNode {
    pub level: u8,
    pub index: u64,
}

/// In-memory [`NodeSource`] for tests and benchmarks: every perfect node, by level.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
    frontier: Frontier,
    completed: Vec<CompletedNode>,
}

impl MemoryTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash and stores every perfect node it completes.
    pub fn push(&mut self, leaf: Hash) {
        self.completed.clear();
        self.frontier.append_into(leaf, &mut self.completed);
        for &(level, _index, hash) in &self.completed {
            let level = usize::from(level);
            if self.levels.len() <= level {
                self.levels.resize_with(level + 1, Vec::new);
            }
            self.levels[level].push(hash);
        }
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The frontier of the whole tree.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }
}

impl NodeSource for MemoryTree {
    type Error = MissingNode;

    fn node(&self, level: u8, index: u64) -> Result<Hash, MissingNode> {
        self.levels
            .get(usize::from(level))
            .and_then(|nodes| nodes.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or(MissingNode { level, index })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test code: a panic is a failure report.
mod tests {
    use super::*;
    use crate::proof::{verify_consistency, verify_inclusion};
    use crate::{leaf_hash, ProofError};
    use proptest::prelude::*;

    /// RFC 6962 §2.1 `MTH`, straight from the definition.
    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            count => {
                let split = largest_power_of_two_below(count as u64) as usize;
                node_hash(&naive_root(&leaves[..split]), &naive_root(&leaves[split..]))
            }
        }
    }

    fn leaves(count: u64) -> Vec<Hash> {
        (0..count).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn tree(leaves: &[Hash]) -> MemoryTree {
        let mut tree = MemoryTree::new();
        for leaf in leaves {
            tree.push(*leaf);
        }
        tree
    }

    /// Counts node reads to check the O(log n) promise.
    struct CountingSource<'a> {
        tree: &'a MemoryTree,
        reads: std::cell::Cell<u32>,
    }

    impl NodeSource for CountingSource<'_> {
        type Error = MissingNode;
        fn node(&self, level: u8, index: u64) -> Result<Hash, MissingNode> {
            self.reads.set(self.reads.get() + 1);
            self.tree.node(level, index)
        }
    }

    #[test]
    fn small_trees_match_the_definition() {
        for size in 0..70 {
            let leaves = leaves(size);
            let tree = tree(&leaves);
            assert_eq!(tree.root(), naive_root(&leaves), "size {size}");
            assert_eq!(root(size, &tree).unwrap(), naive_root(&leaves));
            for old_size in 1..=size {
                assert_eq!(
                    root(old_size, &tree).unwrap(),
                    naive_root(&leaves[..old_size as usize])
                );
            }
        }
    }

    #[test]
    fn append_reports_completed_nodes() {
        let leaves = leaves(4);
        let mut frontier = Frontier::new();
        assert_eq!(frontier.append(leaves[0]), vec![(0, 0, leaves[0])]);
        let pair = node_hash(&leaves[0], &leaves[1]);
        assert_eq!(
            frontier.append(leaves[1]),
            vec![(0, 1, leaves[1]), (1, 0, pair)]
        );
        assert_eq!(frontier.append(leaves[2]), vec![(0, 2, leaves[2])]);
        let pair2 = node_hash(&leaves[2], &leaves[3]);
        assert_eq!(
            frontier.append(leaves[3]),
            vec![
                (0, 3, leaves[3]),
                (1, 1, pair2),
                (2, 0, node_hash(&pair, &pair2))
            ]
        );
    }

    #[test]
    fn reads_are_logarithmic() {
        let tree = tree(&leaves(1000));
        let counting = CountingSource {
            tree: &tree,
            reads: std::cell::Cell::new(0),
        };
        root(1000, &counting).unwrap();
        assert!(counting.reads.get() <= 10, "{}", counting.reads.get());
        for index in [0, 1, 500, 998, 999] {
            counting.reads.set(0);
            inclusion_proof(index, 1000, &counting).unwrap();
            assert!(counting.reads.get() <= 20, "{}", counting.reads.get());
        }
    }

    #[test]
    fn a_proof_from_the_empty_tree_is_empty_and_verifies() {
        let leaves = leaves(7);
        let tree = tree(&leaves);
        for size in 0..=7 {
            let proof = consistency_proof(0, size, &tree).unwrap();
            assert!(proof.is_empty());
            let new_root = root(size, &tree).unwrap();
            crate::proof::verify_consistency(0, size, &empty_root(), &new_root, &proof).unwrap();
        }
    }

    #[test]
    fn missing_nodes_and_bad_arguments_are_errors() {
        let tree = tree(&leaves(5));
        assert!(matches!(root(6, &tree), Err(TreeError::Source { .. })));
        assert!(matches!(root(8, &tree), Err(TreeError::Source { .. })));
        assert!(matches!(
            inclusion_proof(5, 5, &tree),
            Err(TreeError::IndexOutOfRange { .. })
        ));
        assert_eq!(consistency_proof(0, 5, &tree).unwrap(), Vec::<Hash>::new());
        assert_eq!(consistency_proof(0, 0, &tree).unwrap(), Vec::<Hash>::new());
        assert!(matches!(
            consistency_proof(6, 5, &tree),
            Err(TreeError::InvalidSizes { .. })
        ));
        assert_eq!(consistency_proof(5, 5, &tree).unwrap(), Vec::<Hash>::new());
        assert!(root(u64::MAX, &tree).is_err());
        assert!(inclusion_proof(0, u64::MAX, &tree).is_err());
        assert!(Frontier::restore(u64::MAX, &tree).is_err());
    }

    #[test]
    fn full_frontier_ignores_appends() {
        // Restore a u64::MAX-leaf frontier from a source that answers every read.
        struct Constant;
        impl NodeSource for Constant {
            type Error = MissingNode;
            fn node(&self, _level: u8, _index: u64) -> Result<Hash, MissingNode> {
                Ok([1; 32])
            }
        }
        let mut frontier = Frontier::restore(u64::MAX - 1, &Constant).unwrap();
        assert_eq!(frontier.append([2; 32]).len(), 1);
        let full = frontier.clone();
        assert_eq!(frontier.append([3; 32]), Vec::new());
        assert_eq!(frontier, full);
    }

    fn flip_bit(hash: &mut Hash, bit: usize) {
        hash[bit / 8 % 32] ^= 1 << (bit % 8);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn roots_agree(size in 0u64..2000) {
            let leaves = leaves(size);
            let tree = tree(&leaves);
            let expected = naive_root(&leaves);
            prop_assert_eq!(tree.root(), expected);
            prop_assert_eq!(root(size, &tree).unwrap(), expected);
            let restored = Frontier::restore(size, &tree).unwrap();
            prop_assert_eq!(&restored, tree.frontier());
            prop_assert_eq!(restored.root(), expected);
        }

        #[test]
        fn restored_frontier_keeps_appending(size in 0u64..2000, extra in 1u64..70) {
            let leaves = leaves(size + extra);
            let tree = tree(&leaves[..size as usize]);
            let mut restored = Frontier::restore(size, &tree).unwrap();
            let mut reference = tree.frontier().clone();
            for leaf in &leaves[size as usize..] {
                prop_assert_eq!(restored.append(*leaf), reference.append(*leaf));
            }
            prop_assert_eq!(restored.root(), naive_root(&leaves));
        }

        #[test]
        fn inclusion_proofs_verify_and_detect_tampering(
            size in 1u64..2000,
            index_seed in any::<u64>(),
            bit in any::<usize>(),
            position_seed in any::<usize>(),
        ) {
            // Twice as many leaves, so that the genuine roots of other sizes are available.
            let leaves = leaves(size * 2 + 1);
            let tree = tree(&leaves);
            let index = index_seed % size;
            let tree_root = root(size, &tree).unwrap();
            let leaf = leaves[index as usize];
            let proof = inclusion_proof(index, size, &tree).unwrap();
            prop_assert_eq!(verify_inclusion(&leaf, index, size, &proof, &tree_root), Ok(()));

            if !proof.is_empty() {
                let mut tampered = proof.clone();
                flip_bit(&mut tampered[position_seed % proof.len()], bit);
                prop_assert!(verify_inclusion(&leaf, index, size, &tampered, &tree_root).is_err());
            }
            let mut wrong_leaf = leaf;
            flip_bit(&mut wrong_leaf, bit);
            prop_assert!(verify_inclusion(&wrong_leaf, index, size, &proof, &tree_root).is_err());
            let mut wrong_root = tree_root;
            flip_bit(&mut wrong_root, bit);
            prop_assert!(verify_inclusion(&leaf, index, size, &proof, &wrong_root).is_err());
            for other_index in [index ^ 1, index + 1, index.wrapping_sub(1), index ^ 2] {
                if other_index != index {
                    prop_assert!(
                        verify_inclusion(&leaf, other_index, size, &proof, &tree_root).is_err()
                    );
                }
            }
            // The size is bound by the signed root: a proof for one size never convinces a
            // verifier holding the genuine root of another size.
            for other_size in [size + 1, size - 1, size * 2, size / 2, size ^ 1, size + 2] {
                if other_size != size {
                    let other_root = root(other_size, &tree).unwrap();
                    prop_assert!(
                        verify_inclusion(&leaf, index, other_size, &proof, &other_root).is_err()
                    );
                }
            }
            let mut longer = proof.clone();
            longer.push(leaf);
            prop_assert!(verify_inclusion(&leaf, index, size, &longer, &tree_root).is_err());
        }

        #[test]
        fn consistency_proofs_verify_and_detect_tampering(
            new_size in 1u64..2000,
            old_seed in any::<u64>(),
            bit in any::<usize>(),
            position_seed in any::<usize>(),
        ) {
            let leaves = leaves(new_size + 2);
            let tree = tree(&leaves);
            let old_size = old_seed % new_size + 1;
            let old_root = root(old_size, &tree).unwrap();
            let new_root = root(new_size, &tree).unwrap();
            let proof = consistency_proof(old_size, new_size, &tree).unwrap();
            prop_assert_eq!(
                verify_consistency(old_size, new_size, &old_root, &new_root, &proof),
                Ok(())
            );
            if !proof.is_empty() {
                let mut tampered = proof.clone();
                flip_bit(&mut tampered[position_seed % proof.len()], bit);
                prop_assert!(
                    verify_consistency(old_size, new_size, &old_root, &new_root, &tampered)
                        .is_err()
                );
            }
            let mut wrong_old = old_root;
            flip_bit(&mut wrong_old, bit);
            prop_assert!(verify_consistency(old_size, new_size, &wrong_old, &new_root, &proof).is_err());
            let mut wrong_new = new_root;
            flip_bit(&mut wrong_new, bit);
            prop_assert!(verify_consistency(old_size, new_size, &old_root, &wrong_new, &proof).is_err());
            for (other_old, other_new) in [
                (old_size + 1, new_size),
                (old_size - 1, new_size),
                (old_size, new_size + 1),
                (old_size, new_size - 1),
                (old_size ^ 1, new_size),
                (old_size, new_size ^ 1),
            ] {
                if (other_old, other_new) != (old_size, new_size) {
                        // Genuine roots of the other sizes: the proof must not fit them.
                    let other_old_root = root(other_old, &tree).unwrap();
                    let other_new_root = root(other_new, &tree).unwrap();
                    prop_assert!(
                        verify_consistency(
                            other_old, other_new, &other_old_root, &other_new_root, &proof
                        ).is_err(),
                        "{} {} accepted as {} {}", old_size, new_size, other_old, other_new
                    );
                }
            }
        }
    }

    #[test]
    fn every_proof_of_small_trees_verifies() {
        let leaves = leaves(40);
        let tree = tree(&leaves);
        for size in 1..=40u64 {
            let tree_root = root(size, &tree).unwrap();
            for index in 0..size {
                let proof = inclusion_proof(index, size, &tree).unwrap();
                let leaf = leaves[index as usize];
                assert_eq!(
                    verify_inclusion(&leaf, index, size, &proof, &tree_root),
                    Ok(())
                );
            }
            for old_size in 1..=size {
                let old_root = root(old_size, &tree).unwrap();
                let proof = consistency_proof(old_size, size, &tree).unwrap();
                assert_eq!(
                    verify_consistency(old_size, size, &old_root, &tree_root, &proof),
                    Ok(()),
                    "{old_size} -> {size}"
                );
            }
        }
        assert_eq!(
            verify_consistency(3, 3, &[0; 32], &[1; 32], &[]),
            Err(ProofError::DifferentRootsSameSize)
        );
    }
}
