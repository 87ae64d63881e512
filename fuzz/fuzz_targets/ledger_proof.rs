//! The proof-document and signed-note parsers and verifiers of keel-ledger, over hostile text,
//! plus the algebra they rest on: every proof the tree produces verifies, survives a JSON round
//! trip as a document, and stops verifying when any of its bytes changes.
#![no_main]

use keel_ledger::checkpoint::{Checkpoint, NoteSigner, VerifierKey};
use keel_ledger::{
    consistency_proof, inclusion_proof, leaf_hash, verify_checkpoint, MemoryTree, ProofDocument,
};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "fuzz.example/log";

/// The log's key, made once: deriving it per input would dominate the run.
static SIGNER: std::sync::OnceLock<NoteSigner> = std::sync::OnceLock::new();

fuzz_target!(|bytes: &[u8]| {
    let Some((&mode, rest)) = bytes.split_first() else {
        return;
    };
    let signer = SIGNER.get_or_init(|| match NoteSigner::from_seed(ORIGIN, &[7; 32]) {
        Ok(signer) => signer,
        Err(error) => panic!("the fixed key must load: {error}"),
    });
    match mode % 4 {
        0 => notes(&signer, rest),
        1 => documents(&signer, rest),
        2 => keys(rest),
        _ => {
            let _ = proofs(&signer, &mut Unstructured::new(rest));
        }
    }
});

/// A signed note of any shape: verified against the fixed key, its body parsed on its own.
fn notes(signer: &NoteSigner, bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(checkpoint) = verify_checkpoint(text, &signer.verifier_key()) {
        // Only a note the fixed key signed can verify; its body must parse back the same.
        assert_eq!(Checkpoint::parse_body(&checkpoint.body()), Ok(checkpoint));
    }
    if let Ok(checkpoint) = Checkpoint::parse_body(text) {
        let again = Checkpoint::parse_body(&checkpoint.body());
        assert_eq!(again.as_ref(), Ok(&checkpoint), "body round trip");
    }
}

/// A JSON proof document of any shape, checked against the fixed key.
fn documents(signer: &NoteSigner, bytes: &[u8]) {
    if let Ok(document) = serde_json::from_slice::<ProofDocument>(bytes) {
        let _ = document.check(&signer.verifier_key());
    }
}

/// Verifier and private keys of any shape; a parsed verifier key prints back to itself.
fn keys(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(key) = VerifierKey::parse(text) {
        assert_eq!(VerifierKey::parse(&key.to_string()), Ok(key));
    }
    if let Ok(signer) = NoteSigner::from_private_key(text) {
        let note = signer.sign(&Checkpoint {
            origin: ORIGIN.into(),
            size: 1,
            root: [1; 32],
        });
        assert!(verify_checkpoint(&note, &signer.verifier_key()).is_ok());
    }
}

/// A real tree of up to 300 leaves: its proofs verify as documents, and altering any byte of
/// a document's proof, hash or note makes the check fail.
fn proofs(signer: &NoteSigner, input: &mut Unstructured<'_>) -> Result<()> {
    let size = u64::from(input.int_in_range(1u16..=300)?);
    let mut tree = MemoryTree::new();
    for index in 0..size {
        tree.push(leaf_hash(&index.to_be_bytes()));
    }
    let note = signer.sign(&Checkpoint {
        origin: ORIGIN.into(),
        size,
        root: tree.root(),
    });
    let index = input.int_in_range(0..=size - 1)?;
    let from_size = input.int_in_range(1..=size)?;
    let mut from_tree = MemoryTree::new();
    for leaf in 0..from_size {
        from_tree.push(leaf_hash(&leaf.to_be_bytes()));
    }
    let (Ok(inclusion), Ok(consistency)) = (
        inclusion_proof(index, size, &tree),
        consistency_proof(from_size, size, &tree),
    ) else {
        panic!("a tree of {size} leaves must prove leaf {index} and size {from_size}");
    };
    let documents = [
        ProofDocument::Inclusion {
            leaf_index: index,
            tree_size: size,
            leaf_hash: hex::encode(leaf_hash(&index.to_be_bytes())),
            proof: inclusion.iter().map(hex::encode).collect(),
            checkpoint: note.clone(),
            entry: None,
        },
        ProofDocument::Consistency {
            from_size,
            to_size: size,
            from_root: hex::encode(from_tree.root()),
            to_root: hex::encode(tree.root()),
            proof: consistency.iter().map(hex::encode).collect(),
            checkpoint: note,
        },
    ];
    let key = signer.verifier_key();
    for document in documents {
        let text = match serde_json::to_string(&document) {
            Ok(text) => text,
            Err(error) => panic!("a document must serialize: {error}"),
        };
        let parsed: ProofDocument = match serde_json::from_str(&text) {
            Ok(parsed) => parsed,
            Err(error) => panic!("a document must parse back: {error}"),
        };
        assert_eq!(parsed, document);
        if let Err(error) = document.check(&key) {
            panic!("a true proof must check: {error}: {text}");
        }
        let altered = alter(&document, input)?;
        if altered != document {
            assert!(
                altered.check(&key).is_err(),
                "an altered document checked: {altered:?}"
            );
        }
    }
    Ok(())
}

/// The document with one hex digit of one hash changed.
fn alter(document: &ProofDocument, input: &mut Unstructured<'_>) -> Result<ProofDocument> {
    let mut altered = document.clone();
    let hashes: Vec<&mut String> = match &mut altered {
        ProofDocument::Inclusion {
            leaf_hash, proof, ..
        } => std::iter::once(leaf_hash).chain(proof.iter_mut()).collect(),
        ProofDocument::Consistency {
            from_root,
            to_root,
            proof,
            ..
        } => [from_root, to_root]
            .into_iter()
            .chain(proof.iter_mut())
            .collect(),
    };
    let count = hashes.len();
    let Some(hash) = hashes.into_iter().nth(input.choose_index(count)?) else {
        return Ok(altered);
    };
    let position = input.choose_index(hash.len())?;
    let digit = hash.as_bytes()[position];
    let replacement = if digit == b'0' { "1" } else { "0" };
    hash.replace_range(position..=position, replacement);
    Ok(altered)
}
