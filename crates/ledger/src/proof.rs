//! Offline verification of RFC 9162 §2.1.3.2 inclusion and §2.1.4.2 consistency proofs.
//!
//! Verification needs no tree access: only the hashes in the proof and the signed roots.
//! The `*_bytes` variants take hashes of unchecked length, as they arrive from JSON or other
//! implementations' test vectors, and reject wrong lengths with an error instead of panicking.

use crate::{node_hash, Hash};

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}; the proof cannot be valid")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old tree size {old_size} is larger than new tree size {new_size}")]
    SizesReversed { old_size: u64, new_size: u64 },
    #[error("the old tree is empty, so its root must be the empty root (SHA-256 of nothing) and its proof empty")]
    EmptyOldTree,
    #[error("the trees have the same size but different roots: the log forked or a root is wrong")]
    DifferentRootsSameSize,
    #[error("proof has {actual} hashes but {expected} are needed for these sizes")]
    WrongProofLength { expected: usize, actual: usize },
    #[error("{what} has {length} bytes; a SHA-256 hash has 32")]
    WrongHashLength { what: &'static str, length: usize },
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,
}

/// Verifies that `leaf_hash` is the leaf at `index` of the tree of `size` leaves with `root`.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    verify_inclusion_bytes(leaf_hash, index, size, proof, root)
}

/// Verifies that the tree of `old_size` leaves with `old_root` is a prefix of the tree of
/// `new_size` leaves with `new_root`. From the empty tree (`old_size` 0) the proof is empty and
/// the old root must be the empty root; every tree extends it (RFC 9162 §2.1.4.2, as C2SP and
/// transparency-dev verifiers accept it).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    verify_consistency_bytes(old_size, new_size, old_root, new_root, proof)
}

/// [`verify_inclusion`] for hashes of unchecked length.
pub fn verify_inclusion_bytes<P: AsRef<[u8]>>(
    leaf_hash: &[u8],
    index: u64,
    size: u64,
    proof: &[P],
    root: &[u8],
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (inner, border) = decompose_inclusion(index, size);
    check_length(inner + border, proof.len())?;
    let mut computed = to_hash(leaf_hash, "leaf hash")?;
    let mut first = index;
    let mut second = size - 1;
    for sibling in proof {
        let sibling = to_hash(sibling.as_ref(), "proof hash")?;
        if second == 0 {
            return Err(ProofError::RootMismatch);
        }
        if first & 1 == 1 || first == second {
            computed = node_hash(&sibling, &computed);
            while first & 1 == 0 && first != 0 {
                first >>= 1;
                second >>= 1;
            }
        } else {
            computed = node_hash(&computed, &sibling);
        }
        first >>= 1;
        second >>= 1;
    }
    if second != 0 || computed.as_slice() != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// [`verify_consistency`] for hashes of unchecked length. When the sizes are equal the roots
/// are compared byte for byte, whatever their length.
pub fn verify_consistency_bytes<P: AsRef<[u8]>>(
    old_size: u64,
    new_size: u64,
    old_root: &[u8],
    new_root: &[u8],
    proof: &[P],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesReversed { old_size, new_size });
    }
    if old_size == 0 {
        if !proof.is_empty() || old_root != crate::empty_root().as_slice() {
            return Err(ProofError::EmptyOldTree);
        }
        let new_root = to_hash(new_root, "new root")?;
        if new_size == 0 && new_root != crate::empty_root() {
            return Err(ProofError::DifferentRootsSameSize);
        }
        return Ok(());
    }
    if old_size == new_size {
        check_length(0, proof.len())?;
        if old_root != new_root {
            return Err(ProofError::DifferentRootsSameSize);
        }
        return Ok(());
    }
    let (inner, border) = decompose_inclusion(old_size - 1, new_size);
    let shift = old_size.trailing_zeros() as usize;
    let old_is_perfect = old_size.is_power_of_two();
    // `inner > shift` whenever old_size < new_size, so the subtraction never saturates.
    let expected = inner.saturating_sub(shift) + border + usize::from(!old_is_perfect);
    check_length(expected, proof.len())?;

    // RFC 9162 §2.1.4.2: a perfect old tree is its own first proof element.
    let (seed, rest) = match proof.split_first() {
        _ if old_is_perfect => (to_hash(old_root, "old root")?, proof),
        Some((first, rest)) => (to_hash(first.as_ref(), "proof hash")?, rest),
        None => {
            return Err(ProofError::WrongProofLength {
                expected,
                actual: 0,
            })
        }
    };
    let mut first = old_size - 1;
    let mut second = new_size - 1;
    while first & 1 == 1 {
        first >>= 1;
        second >>= 1;
    }
    let mut old_computed = seed;
    let mut new_computed = seed;
    for sibling in rest {
        let sibling = to_hash(sibling.as_ref(), "proof hash")?;
        if second == 0 {
            return Err(ProofError::RootMismatch);
        }
        if first & 1 == 1 || first == second {
            old_computed = node_hash(&sibling, &old_computed);
            new_computed = node_hash(&sibling, &new_computed);
            while first & 1 == 0 && first != 0 {
                first >>= 1;
                second >>= 1;
            }
        } else {
            new_computed = node_hash(&new_computed, &sibling);
        }
        first >>= 1;
        second >>= 1;
    }
    if second != 0 || old_computed.as_slice() != old_root || new_computed.as_slice() != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Splits the inclusion proof of `index` in a tree of `size` leaves into the hashes below the
/// point where the paths to `index` and to the last leaf diverge (inner) and above it (border).
fn decompose_inclusion(index: u64, size: u64) -> (usize, usize) {
    let inner = (64 - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = index.checked_shr(inner as u32).unwrap_or(0).count_ones() as usize;
    (inner, border)
}

fn check_length(expected: usize, actual: usize) -> Result<(), ProofError> {
    if expected != actual {
        return Err(ProofError::WrongProofLength { expected, actual });
    }
    Ok(())
}

fn to_hash(bytes: &[u8], what: &'static str) -> Result<Hash, ProofError> {
    bytes.try_into().map_err(|_| ProofError::WrongHashLength {
        what,
        length: bytes.len(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test code: a panic is a failure report.
mod tests {
    use super::*;
    use crate::leaf_hash;

    #[test]
    fn single_leaf_tree_needs_an_empty_proof() {
        let leaf = leaf_hash(b"only");
        assert_eq!(verify_inclusion(&leaf, 0, 1, &[], &leaf), Ok(()));
        assert_eq!(
            verify_inclusion(&leaf, 0, 1, &[leaf], &leaf),
            Err(ProofError::WrongProofLength {
                expected: 0,
                actual: 1
            })
        );
        assert_eq!(
            verify_inclusion(&leaf, 1, 1, &[], &leaf),
            Err(ProofError::IndexOutOfRange { index: 1, size: 1 })
        );
    }

    #[test]
    fn two_leaf_tree() {
        let left = leaf_hash(b"a");
        let right = leaf_hash(b"b");
        let root = node_hash(&left, &right);
        assert_eq!(verify_inclusion(&left, 0, 2, &[right], &root), Ok(()));
        assert_eq!(verify_inclusion(&right, 1, 2, &[left], &root), Ok(()));
        assert_eq!(
            verify_inclusion(&right, 0, 2, &[left], &root),
            Err(ProofError::RootMismatch)
        );
        assert_eq!(verify_consistency(1, 2, &left, &root, &[right]), Ok(()));
        assert_eq!(
            verify_consistency(1, 2, &right, &root, &[right]),
            Err(ProofError::RootMismatch)
        );
    }

    /// The empty tree is a prefix of every tree: an empty proof from size 0 verifies when the
    /// old root is the empty root (SHA-256 of nothing), and nothing else does.
    #[test]
    fn consistency_from_the_empty_tree() {
        let empty = crate::empty_root();
        let left = leaf_hash(b"a");
        let root = node_hash(&left, &leaf_hash(b"b"));
        assert_eq!(verify_consistency(0, 2, &empty, &root, &[]), Ok(()));
        assert_eq!(verify_consistency(0, 0, &empty, &empty, &[]), Ok(()));
        assert_eq!(
            verify_consistency(0, 2, &left, &root, &[]),
            Err(ProofError::EmptyOldTree)
        );
        assert_eq!(
            verify_consistency(0, 2, &empty, &root, &[left]),
            Err(ProofError::EmptyOldTree)
        );
        assert_eq!(
            verify_consistency(0, 0, &empty, &root, &[]),
            Err(ProofError::DifferentRootsSameSize)
        );
        assert!(verify_consistency_bytes(0, 1, &empty, b"short", &[] as &[&[u8]]).is_err());
    }

    #[test]
    fn extreme_sizes_do_not_panic() {
        let hash = [7u8; 32];
        let long = vec![hash; 64];
        assert!(verify_inclusion(&hash, u64::MAX - 1, u64::MAX, &long, &hash).is_err());
        assert!(verify_inclusion(&hash, 0, u64::MAX, &long, &hash).is_err());
        assert!(verify_consistency(u64::MAX - 1, u64::MAX, &hash, &hash, &long).is_err());
        assert!(verify_consistency(1, u64::MAX, &hash, &hash, &long).is_err());
        assert!(verify_consistency(1 << 63, u64::MAX, &hash, &hash, &long).is_err());
        assert!(verify_consistency(u64::MAX, u64::MAX, &hash, &hash, &[]).is_ok());
        assert!(verify_inclusion_bytes(&[1u8; 3], 0, 2, &[[0u8; 5]], &hash).is_err());
    }
}
