//! The journal envelope canonicalizer (RFC 8785): any JSON value canonicalizes to bytes that
//! parse back to a value with the same canonical form (idempotence), with object members in
//! UTF-16 order; `data_sha256` hashes exactly those bytes; and the envelope's field-by-field
//! encoder (the leaf's bytes) equals the generic encoder over the envelope's JSON value.
#![no_main]

use keel_ledger::{jcs, Actor, Envelope, Subject};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sha2::{Digest, Sha256};

fuzz_target!(|bytes: &[u8]| {
    let Some((&mode, rest)) = bytes.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        check_value(rest);
    } else if let Ok(envelope) = envelope(&mut Unstructured::new(rest)) {
        check_envelope(&envelope);
    }
});

fn check_value(bytes: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let canonical = jcs::canonicalize(&value);
    let reparsed: Value = match serde_json::from_slice(&canonical) {
        Ok(reparsed) => reparsed,
        Err(error) => panic!(
            "canonical form is not JSON ({error}): {}",
            String::from_utf8_lossy(&canonical)
        ),
    };
    assert_eq!(
        jcs::canonicalize(&reparsed),
        canonical,
        "canonicalization is not idempotent"
    );
    assert_sorted(&reparsed);
    assert_eq!(
        keel_ledger::data_sha256(&value),
        hex::encode(Sha256::digest(&canonical)),
        "data_sha256 does not hash the canonical bytes"
    );
    if let Ok(envelope) = serde_json::from_value::<Envelope>(value) {
        check_envelope(&envelope);
    }
}

/// Object members appear in the order of the UTF-16 code units of their names (RFC 8785 §3.2.3).
fn assert_sorted(value: &Value) {
    match value {
        Value::Object(members) => {
            let names: Vec<Vec<u16>> = members.keys().map(|k| k.encode_utf16().collect()).collect();
            assert!(
                names.windows(2).all(|pair| pair[0] < pair[1]),
                "members out of order: {names:?}"
            );
            members.values().for_each(assert_sorted);
        }
        Value::Array(items) => items.iter().for_each(assert_sorted),
        _ => {}
    }
}

fn envelope(input: &mut Unstructured<'_>) -> Result<Envelope> {
    Ok(Envelope {
        seq: input.arbitrary()?,
        at: input.arbitrary()?,
        kind: input.arbitrary()?,
        actor: Actor {
            actor_type: input.arbitrary()?,
            id: input.arbitrary()?,
        },
        subject: Subject {
            case: optional(input)?,
            workflow: optional(input)?,
            step: optional(input)?,
            task: optional(input)?,
            exception: optional(input)?,
        },
        data_sha256: input.arbitrary()?,
    })
}

fn check_envelope(envelope: &Envelope) {
    let fast = envelope.canonical_bytes();
    let value = match serde_json::to_value(envelope) {
        Ok(value) => value,
        Err(error) => panic!("an envelope must serialize: {error}"),
    };
    let generic = jcs::canonicalize(&value);
    assert_eq!(
        String::from_utf8_lossy(&fast),
        String::from_utf8_lossy(&generic),
        "the envelope encoder differs from the generic one"
    );
    assert_eq!(fast, generic);
    assert_eq!(envelope.leaf_hash(), keel_ledger::leaf_hash(&fast));
    // JCS numbers are doubles: a sequence number beyond 2^53 is rounded on purpose.
    if envelope.seq.unsigned_abs() <= 1 << 53 {
        let back: Envelope = match serde_json::from_slice(&fast) {
            Ok(back) => back,
            Err(error) => panic!("the canonical envelope does not parse back: {error}"),
        };
        assert_eq!(
            &back, envelope,
            "the canonical envelope does not round-trip"
        );
    }
}

fn optional(input: &mut Unstructured<'_>) -> Result<Option<String>> {
    Ok(if input.arbitrary::<bool>()? {
        Some(input.arbitrary()?)
    } else {
        None
    })
}
